// Loading a message to run it: read from this server's WAL, decoded, authenticated
// (message_load.cc). The one place every apply path gets a message from: atx.apply_batch,
// atx.apply, atx.dead_letter_message, atx.run_nonatomic, atx.retry_dead_letter.
#pragma once

#include "atx_ext.h"
#include "codec_bridge.h"

enum AtxLoadState {
    ATX_LOAD_OK,        // authenticated, its role exists: it may run
    ATX_LOAD_REJECTED,  // not a pg_atx message at that position, or a newer format: never
                        // executed, nothing recorded (error, sqlerrcode say why)
    ATX_LOAD_DEAD,      // a pg_atx record that can never run (malformed, bad MAC, role gone):
                        // dead-lettered (error, sqlerrcode)
};

struct AtxLoaded {
    XLogRecPtr lsn;
    AtxLoadState state;
    int sqlerrcode;
    const char* error;
    // The id it is recorded under: the one it carries when it authenticated; otherwise an id
    // of its position (never the id it claims, which may be a genuine message's).
    bool have_id;
    uint8 id[16];
    bool authenticated;  // decoded and its HMAC verified: its fields may be trusted and shown
    bool parked;         // read from its parked copy (parked.h), not from the WAL
    char* payload;
    size_t len;
    AtxMessageC m;
};

// Loads the message starting at lsn: from its parked copy when it has one (parked.h), else from
// the WAL record there.
void atx_load_message(XLogRecPtr lsn, AtxLoaded* out);
// The same, for a caller that knows no message is parked (atx_parked_any): the WAL only.
void atx_load_message_from(XLogRecPtr lsn, bool maybe_parked, AtxLoaded* out);
// Loads a payload kept elsewhere (a dead letter's), first read at lsn (may be invalid).
void atx_load_payload(const char* payload, size_t len, XLogRecPtr lsn, AtxLoaded* out);

// What a dead letter shows of it: all of it when it authenticated; otherwise only its id (its
// text fields may be anything, not even valid in the database encoding; the raw payload is
// kept for atx.decode()).
const AtxMessageC* atx_loaded_view(const AtxLoaded* l);
