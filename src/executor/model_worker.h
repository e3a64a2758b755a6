// `k2 worker --task model` (hidden; ranks 1..W-1 of a parallel `k2 serve`): joins the job's Gloo groups, loads this
// rank's shard (ModelOptions::parallel), reports WorkerStatus to the driver, then runs what the driver sends until
// Shutdown: AllocateKv -> allocate_kv_cache, StepPlan -> forward (an empty batch when is_dummy); the DP leader of a
// replica other than the driver's sends its logits back as StepResult. Any error is sent to the driver as a
// WorkerStatus naming it before the process exits 1.
#pragma once

#include "dist/worker_main.h"

namespace k2::executor {

dist::WorkerTask model_worker_task();

}  // namespace k2::executor
