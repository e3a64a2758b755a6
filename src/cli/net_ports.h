// Small socket helpers of the parallel commands (k2 serve, k2 bench step): free rendezvous ports and the local
// address that routes to a peer.
#pragma once

#include <string>

namespace k2::cli {

// A port P with P + 1 also free on `host` (rendezvous and control), from the kernel's ephemeral range.
int free_port_pair(const std::string& host);

// The address of this host's interface that routes to `peer` (a UDP connect sends nothing).
std::string local_address_towards(const std::string& peer);

}  // namespace k2::cli
