// The chat template used when a checkpoint has none.
#pragma once

namespace k2 {

extern const char* const kDefaultKimiChatTemplate;

}  // namespace k2
