// See param_binder.h. Plain C style (see pg_guard.h).
#include "param_binder.h"
#include "wire_encoding.h"

ParamListInfo atx_bind_params(const AtxMessageC* m, Oid* types)
{
    ParamListInfo params = m->nparams > 0 ? makeParamList(m->nparams) : NULL;

    for (int i = 0; i < m->nparams; i++) {
        const AtxParamC* p = &m->params[i];
        ParamExternData* prm = &params->params[i];
        Oid fn, ioparam;

        if (!SearchSysCacheExists1(TYPEOID, ObjectIdGetDatum(p->type_oid)))
            ereport(ERROR,
                    (errcode(ERRCODE_UNDEFINED_OBJECT),
                     errmsg("type %s (OID %u) of parameter $%d does not exist", p->type_name, p->type_oid, i + 1)));
        types[i] = p->type_oid;
        prm->ptype = p->type_oid;
        prm->pflags = PARAM_FLAG_CONST;
        prm->isnull = p->is_null;
        prm->value = (Datum)0;
        if (p->is_null)
            continue;
        if (p->binary) {
            StringInfoData buf;
            getTypeBinaryInputInfo(p->type_oid, &fn, &ioparam);
            // The receive function reads from a buffer it owns; the payload stays untouched.
            initStringInfo(&buf);
            appendBinaryStringInfo(&buf, p->value, (int)p->value_len);
            prm->value = atx_receive_in_database_encoding(fn, &buf, ioparam, -1);
            if (buf.cursor != buf.len)
                ereport(ERROR, (errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
                                errmsg("incorrect binary data format in parameter $%d", i + 1)));
        } else {
            getTypeInputInfo(p->type_oid, &fn, &ioparam);
            prm->value = OidInputFunctionCall(fn, (char*)p->value, ioparam, -1);
        }
    }
    return params;
}
