// The message whose statement is running in this backend (current_message.cc): read by
// atx.current_message(), by nested emits (derived ids, lanes) and by atx_exec.
#pragma once

#include "atx_ext.h"
#include "codec_bridge.h"

struct AtxCurrentMessage {
    const AtxMessageC* m;  // not copied: must stay valid while current
    uint32 nested_emits;   // emits made so far by this message's statement (derived ids)
    bool across_xacts;     // a non-atomic run: survives the transactions its statement ends
};

// Makes m current and returns what was current before (restore it afterwards, also on error:
// a nested apply leaves the outer message current again). A top-level commit or abort clears
// it anyway, unless across_xacts.
AtxCurrentMessage atx_current_message_push(const AtxMessageC* m, bool across_xacts);
void atx_current_message_pop(const AtxCurrentMessage* saved);

// The message being applied, or NULL outside an apply.
AtxCurrentMessage* atx_current_message(void);
