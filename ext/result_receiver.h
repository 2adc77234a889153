// Where the rows of an applied statement go (result_receiver.cc): nowhere when nobody waits
// for them, into a JSON array capped while it is built when an atx_exec caller does.
#pragma once

#include "atx_ext.h"

struct AtxResultReceiver;

// A receiver that keeps at most cap bytes of JSON (the rows of the last statement that
// returned any), in the memory context current at creation.
AtxResultReceiver* atx_result_receiver_create(int cap);
DestReceiver* atx_result_receiver_dest(AtxResultReceiver* r);
// The JSON array text, or NULL when there were no rows or they did not fit (*truncated).
const char* atx_result_receiver_json(AtxResultReceiver* r, bool* truncated);
