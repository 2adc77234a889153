// See message_json.h. Plain C style (see pg_guard.h).
#include "message_json.h"

#include "text_format.h"

static void append_params(StringInfo s, const AtxMessageC* m)
{
    appendStringInfoChar(s, '[');
    for (int i = 0; i < m->nparams; i++) {
        const AtxParamC* p = &m->params[i];
        if (i > 0)
            appendStringInfoString(s, ", ");
        appendStringInfoString(s, "{\"type\": ");
        escape_json(s, p->type_name);
        appendStringInfo(s, ", \"type_oid\": %u, \"null\": %s, \"binary\": %s, \"value\": ", p->type_oid,
                         p->is_null ? "true" : "false", p->binary ? "true" : "false");
        if (p->is_null) {
            appendStringInfoString(s, "null");
        } else {
            StringInfoData v;
            initStringInfo(&v);
            atx_append_param_value(&v, p);
            escape_json(s, v.data);
        }
        appendStringInfoChar(s, '}');
    }
    appendStringInfoChar(s, ']');
}

char* atx_params_json(const AtxMessageC* m)
{
    StringInfoData s;
    initStringInfo(&s);
    append_params(&s, m);
    return s.data;
}

char* atx_message_json(const AtxMessageC* m)
{
    StringInfoData s;
    char id[37], lane[37];

    atx_uuid_text(m->id, id);
    atx_uuid_text(m->lane, lane);
    initStringInfo(&s);
    appendStringInfo(&s, "{\"id\": \"%s\", \"version\": %d, \"database_oid\": %u, \"role_oid\": %u, \"role\": ", id,
                     m->version, m->database_oid, m->role_oid);
    escape_json(&s, m->role_name);
    appendStringInfoString(&s, ", \"session_user\": ");
    if (m->session_role_name && m->session_role_name[0])
        escape_json(&s, m->session_role_name);
    else
        appendStringInfoString(&s, "null");
    if (m->caller_xid)
        appendStringInfo(&s, ", \"caller_xid\": " UINT64_FORMAT, m->caller_xid);
    else
        appendStringInfoString(&s, ", \"caller_xid\": null");
    appendStringInfoString(&s, ", \"emitted_at\": ");
    escape_json(&s, JsonEncodeDateTime(NULL, TimestampTzGetDatum(m->emit_time), TIMESTAMPTZOID, NULL));
    appendStringInfo(&s, ", \"depth\": %d, \"lane\": \"%s\", \"waited\": %s", m->depth, lane,
                     m->waited ? "true" : "false");
    appendStringInfoString(&s, ", \"gucs\": {");
    for (int i = 0; i < m->nguc; i++) {
        if (i > 0)
            appendStringInfoString(&s, ", ");
        escape_json(&s, m->gucs[i].name);
        appendStringInfoString(&s, ": ");
        escape_json(&s, m->gucs[i].value);
    }
    appendStringInfoString(&s, "}, \"statement\": ");
    escape_json(&s, m->statement);
    appendStringInfoString(&s, ", \"params\": ");
    append_params(&s, m);
    appendStringInfoString(&s, ", \"key\": ");
    if (m->key)
        escape_json(&s, m->key);
    else
        appendStringInfoString(&s, "null");
    appendStringInfoChar(&s, '}');
    return s.data;
}
