// load_model: reads config.json, validates the checkpoint against it and builds the model for the device.
#include "model/model.h"

#include "core/log.h"
#include "io/safetensors.h"
#include "model/deepseek_v3.h"
#include "model/weight_schema.h"
#ifdef K2_HAVE_CUDA_MODEL
#include "model/cuda/deepseek_v3_cuda.h"
#endif

namespace k2 {

namespace {

void check_supported(const ModelConfig& c, const std::filesystem::path& dir) {
    const std::string file = (dir / "config.json").string();
    K2_CHECK(c.scoring_func == "sigmoid", "{}: scoring_func \"{}\" is not supported (only \"sigmoid\")", file,
             c.scoring_func);
    K2_CHECK(c.n_routed_experts == 0 || c.topk_method == "noaux_tc",
             "{}: topk_method \"{}\" is not supported (only \"noaux_tc\")", file, c.topk_method);
    K2_CHECK(c.qk_rope_head_dim > 0 && c.qk_rope_head_dim % 2 == 0, "{}: qk_rope_head_dim {} must be even", file,
             c.qk_rope_head_dim);
}

}  // namespace

std::unique_ptr<Model> load_model(const std::filesystem::path& model_dir, const ModelOptions& options) {
    K2_CHECK(options.device == "cpu" || options.device == "cuda", "device \"{}\" is not supported (cpu or cuda)",
             options.device);
#ifndef K2_HAVE_CUDA_MODEL
    K2_CHECK(options.device == "cpu", "--device cuda: this k2 was built without the CUDA backend (nvcc not found)");
#endif
    ModelConfig config = load_model_config(model_dir);
    check_supported(config, model_dir);
    Checkpoint checkpoint = Checkpoint::open(model_dir);
    const std::vector<std::string> extra = validate_checkpoint(checkpoint, config);
    if (!extra.empty()) {
        K2_WARN("{}: {} unexpected tensors are ignored (first: {})", model_dir.string(), extra.size(), extra.front());
    }
#ifdef K2_HAVE_CUDA_MODEL
    if (options.device == "cuda") {
        return std::make_unique<DeepseekV3CudaModel>(std::move(config), std::move(checkpoint), options);
    }
#endif
    DeepseekV3Weights weights = load_deepseek_v3_weights(checkpoint, config);
    return std::make_unique<DeepseekV3Model>(std::move(config), std::move(checkpoint), std::move(weights), options);
}

}  // namespace k2
