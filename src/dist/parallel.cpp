#include "dist/parallel.h"

#include <fmt/format.h>

#include <vector>

#include "core/error.h"
#include "dist/gloo_communicator.h"

namespace k2::dist {

void ParallelConfig::validate() const {
    K2_CHECK(tensor_parallel_size >= 1, "--tensor-parallel-size must be >= 1, got {}", tensor_parallel_size);
    K2_CHECK(pipeline_parallel_size >= 1, "--pipeline-parallel-size must be >= 1, got {}", pipeline_parallel_size);
    K2_CHECK(data_parallel_size >= 1, "--data-parallel-size must be >= 1, got {}", data_parallel_size);
    K2_CHECK(decode_context_parallel_size >= 1, "--decode-context-parallel-size must be >= 1, got {}",
             decode_context_parallel_size);
    K2_CHECK(tensor_parallel_size % decode_context_parallel_size == 0, "tp_size={} must be divisible by dcp_size={}",
             tensor_parallel_size, decode_context_parallel_size);
}

RankCoord rank_coord(const ParallelConfig& c, int rank) {
    K2_CHECK(rank >= 0 && rank < c.world_size(), "rank {} outside world size {}", rank, c.world_size());
    RankCoord coord;
    coord.tp = rank % c.tensor_parallel_size;
    coord.pp = (rank / c.tensor_parallel_size) % c.pipeline_parallel_size;
    coord.dp = rank / (c.tensor_parallel_size * c.pipeline_parallel_size);
    return coord;
}

int rank_of(const ParallelConfig& c, RankCoord coord) {
    return (coord.dp * c.pipeline_parallel_size + coord.pp) * c.tensor_parallel_size + coord.tp;
}

namespace {

// One group: `members` lists global ranks in group order; the caller is members[index].
std::shared_ptr<Communicator> make_group(const std::vector<int>& members, int index, const std::string& prefix,
                                         const GlooOptions& base, const std::shared_ptr<TcpStore>& store) {
    if (members.size() == 1) {
        return std::make_shared<SingleCommunicator>();
    }
    GlooOptions options = base;
    options.rank = index;
    options.world_size = static_cast<int>(members.size());
    options.store = store;
    options.prefix = prefix;
    return std::make_shared<GlooCommunicator>(options);
}

int index_of(const std::vector<int>& members, int rank) {
    for (size_t i = 0; i < members.size(); ++i) {
        if (members[i] == rank) {
            return static_cast<int>(i);
        }
    }
    K2_FAIL("rank {} is not a member of its own group", rank);
}

}  // namespace

std::shared_ptr<ParallelGroups> make_gloo_groups(const ParallelConfig& config, int rank, const GlooOptions& base) {
    config.validate();
    auto groups = std::make_shared<ParallelGroups>();
    groups->config = config;
    groups->rank = rank;
    groups->coord = rank_coord(config, rank);
    const RankCoord me = groups->coord;
    const int tp = config.tensor_parallel_size;
    const int dcp = config.decode_context_parallel_size;

    GlooOptions world_options = base;
    world_options.rank = rank;
    world_options.world_size = config.world_size();
    world_options.prefix = base.prefix + "/world";
    auto world = std::make_shared<GlooCommunicator>(world_options);
    groups->world = world;
    const std::shared_ptr<TcpStore>& store = world->store();

    std::vector<int> tp_members;  // same (dp, pp)
    for (int t = 0; t < tp; ++t) {
        tp_members.push_back(rank_of(config, {me.dp, me.pp, t}));
    }
    groups->tp = make_group(tp_members, me.tp, fmt::format("{}/tp/{}/{}", base.prefix, me.dp, me.pp), base, store);

    std::vector<int> dcp_members;  // consecutive DCP ranks inside the TP group
    const int dcp_first = me.tp - me.tp % dcp;
    for (int t = dcp_first; t < dcp_first + dcp; ++t) {
        dcp_members.push_back(rank_of(config, {me.dp, me.pp, t}));
    }
    groups->dcp = make_group(dcp_members, me.tp % dcp,
                             fmt::format("{}/dcp/{}/{}/{}", base.prefix, me.dp, me.pp, dcp_first), base, store);

    if (config.enable_expert_parallel) {
        std::vector<int> ep_members;  // every (dp, tp) of this stage, in DP-major order
        for (int d = 0; d < config.data_parallel_size; ++d) {
            for (int t = 0; t < tp; ++t) {
                ep_members.push_back(rank_of(config, {d, me.pp, t}));
            }
        }
        groups->ep = make_group(ep_members, index_of(ep_members, rank), fmt::format("{}/ep/{}", base.prefix, me.pp),
                                base, store);
    } else {
        groups->ep = std::make_shared<SingleCommunicator>();
    }

    std::vector<int> pp_members;  // same (dp, tp), by stage
    for (int p = 0; p < config.pipeline_parallel_size; ++p) {
        pp_members.push_back(rank_of(config, {me.dp, p, me.tp}));
    }
    groups->pp = make_group(pp_members, me.pp, fmt::format("{}/pp/{}/{}", base.prefix, me.dp, me.tp), base, store);
    return groups;
}

std::shared_ptr<ParallelGroups> make_single_groups() {
    auto groups = std::make_shared<ParallelGroups>();
    groups->world = std::make_shared<SingleCommunicator>();
    groups->tp = groups->world;
    groups->dcp = groups->world;
    groups->ep = groups->world;
    groups->pp = groups->world;
    return groups;
}

}  // namespace k2::dist
