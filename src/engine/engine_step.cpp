// One engine step (Engine::Impl, engine_impl.h): the synchronous step, the --async-scheduling pipeline (schedule
// and build step k+1 while step k runs) and the per-sequence sampling and output work both share.
#include <algorithm>
#include <exception>
#include <optional>
#include <span>
#include <vector>

#include "core/log.h"
#include "engine/engine_impl.h"

namespace k2 {

bool Engine::Impl::run_sync_step() {
    timing.begin();
    const SchedulerOutput output = scheduler.schedule();
    if (output.empty()) {
        refresh_gauges();
        return false;
    }
    timing.lap(StepPhase::Schedule);
    BuiltBatch built = build_forward_batch(output, kv);
    plan_device_sampling(output, built);
    timing.lap(StepPhase::Build);
    const auto step_start = Clock::now();
    step_started_ns.store(step_start.time_since_epoch().count());
    Tensor logits;  // [num_logits, vocab_size]
    try {
        logits = model->forward(built.batch);
        check_logits(logits, built);
    } catch (const std::exception& error) {
        step_started_ns.store(0);
        K2_ERROR("engine: forward failed: {}", error.what());
        fail_step(output, error.what());
        refresh_gauges();
        return true;
    }
    step_started_ns.store(0);
    timing.lap(StepPhase::Wait);
    scheduler.on_step_done(output);
    record_step_stats(output);
    std::vector<SeqSample> samples = sample_all(output, built, logits);
    timing.lap(StepPhase::Sample);
    for (size_t seq_idx = 0; seq_idx < output.seqs.size(); ++seq_idx) {
        commit_seq(output.seqs[seq_idx], samples[seq_idx]);
        emit_seq(*output.seqs[seq_idx].request, samples[seq_idx]);
    }
    refresh_gauges();
    timing.lap(StepPhase::Output);
    timing.end_step();
    return true;
}

bool Engine::Impl::run_async_step() {
    release_retired();
    timing.begin();
    std::optional<StepInFlight> next;  // step k+1, built while step k (in_flight) runs
    SchedulerOutput scheduled = scheduler.schedule();
    timing.lap(StepPhase::Schedule);
    if (!scheduled.empty()) {
        BuiltBatch built = build_forward_batch(scheduled, kv);
        plan_device_sampling(scheduled, built);
        scheduler.on_step_scheduled(scheduled);
        next = StepInFlight{std::move(scheduled), std::move(built), ++last_built_step};
    }
    timing.lap(StepPhase::Build);
    std::optional<StepInFlight> done = std::move(in_flight);
    in_flight.reset();
    if (!done.has_value() && !next.has_value()) {
        refresh_gauges();
        return false;
    }
    std::vector<SeqSample> samples;
    if (done.has_value()) {
        step_started_ns.store(Clock::now().time_since_epoch().count());
        Tensor logits;  // [num_logits, vocab_size]
        try {
            logits = model->collect();
            check_logits(logits, done->built);
        } catch (const std::exception& error) {
            step_started_ns.store(0);
            K2_ERROR("engine: forward failed: {}", error.what());
            // Step k+1 was built on k's unsampled tokens: it fails with it.
            last_collected_step = last_built_step;
            fail_step(done->output, error.what());
            if (next.has_value())
                fail_step(next->output, error.what());
            refresh_gauges();
            return true;
        }
        step_started_ns.store(0);
        timing.lap(StepPhase::Wait);
        scheduler.on_step_collected(done->output);
        record_step_stats(done->output);
        samples = sample_all(done->output, done->built, logits);
        logits = Tensor();  // before the next submit: the CUDA model reuses the buffer when no one holds it
        for (size_t seq_idx = 0; seq_idx < done->output.seqs.size(); ++seq_idx) {
            commit_seq(done->output.seqs[seq_idx], samples[seq_idx]);
        }
        last_collected_step = done->id;
        timing.lap(StepPhase::Sample);
    }
    if (next.has_value()) {
        patch_placeholders(next->built);
        try {
            model->submit(next->built.batch);
            in_flight = std::move(next);
        } catch (const std::exception& error) {
            K2_ERROR("engine: forward failed: {}", error.what());
            last_collected_step = next->id;
            fail_step(next->output, error.what());
        }
        timing.lap(StepPhase::Submit);
    }
    if (done.has_value()) {
        for (size_t seq_idx = 0; seq_idx < done->output.seqs.size(); ++seq_idx) {
            Request& request = *done->output.seqs[seq_idx].request;
            if (!request.is_finished())
                emit_seq(request, samples[seq_idx]);
        }
    }
    refresh_gauges();
    timing.lap(StepPhase::Output);
    timing.end_step();
    return true;
}

void Engine::Impl::check_logits(const Tensor& logits, const BuiltBatch& built) const {
    K2_CHECK(logits.dtype() == DType::F32 && logits.rank() == 2 && logits.dim(0) == built.num_logits &&
                 logits.dim(1) == vocab_size,
             "the model returned logits {} for {} rows (vocab {})", logits.shape_string(), built.num_logits,
             vocab_size);
}

void Engine::Impl::record_step_stats(const SchedulerOutput& output) {
    const std::lock_guard lock(stats_mutex);
    stats.preemptions += output.preempted.size();
    stats.prefix_cache_queries += output.prefix_cache_queries;
    stats.prefix_cache_hits += output.prefix_cache_hits;
    stats.computed_tokens += static_cast<uint64_t>(output.num_batched_tokens);
    stats.iteration_tokens.observe(output.num_batched_tokens);
    stats.num_steps += 1;
    stats.last_step_time = Clock::now();
}

std::vector<Engine::Impl::SeqSample> Engine::Impl::sample_all(const SchedulerOutput& output, const BuiltBatch& built,
                                                              const Tensor& logits) {
    const auto num_seqs = static_cast<int64_t>(output.seqs.size());
    std::span<const int32_t> device_tokens;  // [num_logits] or empty
    if (!built.batch.device_sampling.empty()) {
        device_tokens = model->sampled_tokens();
        K2_CHECK(device_tokens.size() == built.batch.device_sampling.size(),
                 "the model sampled {} rows on its device, the step asked for {}", device_tokens.size(),
                 built.batch.device_sampling.size());
    }
    std::vector<SeqSample> samples(output.seqs.size());
    std::vector<std::exception_ptr> errors(output.seqs.size());
#pragma omp parallel for schedule(dynamic) if (num_seqs > 1)
    for (int64_t i = 0; i < num_seqs; ++i) {
        const auto idx = static_cast<size_t>(i);
        if (output.seqs[idx].request->is_finished())
            continue;  // --async-scheduling: ended while the step ran
        try {
            samples[idx] = sample_seq(output.seqs[idx], built.rows[idx], logits, device_tokens);
        } catch (...) {
            errors[idx] = std::current_exception();  // nothing may leave a parallel region
        }
    }
    for (const std::exception_ptr& error : errors) {
        if (error)
            std::rethrow_exception(error);
    }
    return samples;
}

void Engine::Impl::plan_device_sampling(const SchedulerOutput& output, BuiltBatch& built) {
    if (!model->samples_on_device() || built.num_logits == 0)
        return;
    built.batch.device_sampling.assign(static_cast<size_t>(built.num_logits), DeviceSampleRow{});
    for (size_t idx = 0; idx < output.seqs.size(); ++idx) {
        const int sample_row = built.rows[idx].sample_row;
        if (sample_row < 0)
            continue;
        Request& request = *output.seqs[idx].request;
        DeviceSampleRow& row = built.batch.device_sampling[static_cast<size_t>(sample_row)];
        row.mode = device_row_sampling(request.params);
        if (row.mode == RowSampling::Temperature || row.mode == RowSampling::Filtered) {
            const SamplingParams& params = request.params;
            row.inv_temperature = static_cast<float>(1.0 / params.temperature);  // as the host sampler
            row.uniform = draw_uniform(request.rng);
            row.temperature = std::max(params.temperature, kGreedyTemperature);  // the host softmax's divisor
            row.top_p = params.top_p;
            row.min_p = params.min_p;
            row.top_k = params.top_k;
        }
    }
}

Engine::Impl::SeqSample Engine::Impl::sample_seq(const ScheduledSeq& seq, const SeqLogitRows& rows,
                                                 const Tensor& logits, std::span<const int32_t> device_tokens) const {
    const Request& request = *seq.request;
    auto row_of = [&](int row) {
        return std::span<const float>(logits.data_as<float>() + static_cast<size_t>(row) * vocab_size,
                                      static_cast<size_t>(vocab_size));
    };
    SeqSample sample;
    for (int r = 0; r < rows.num_prompt_rows; ++r) {
        const auto next_token = request.token_ids[static_cast<size_t>(rows.first_prompt_position + r + 1)];
        sample.prompt_logprobs.push_back(
            compute_logprobs(row_of(rows.prompt_row_begin + r), next_token, *request.params.prompt_logprobs));
    }
    if (rows.sample_row < 0)
        return sample;  // a prefill chunk that does not reach the end
    if (!device_tokens.empty() && device_tokens[static_cast<size_t>(rows.sample_row)] >= 0) {
        const int32_t token = device_tokens[static_cast<size_t>(rows.sample_row)];
        K2_CHECK(token < vocab_size, "the model sampled token {} outside the vocabulary ({})", token, vocab_size);
        sample.sampled = SampleResult{token, std::nullopt};
        return sample;
    }

    const std::span<const int32_t> all_ids(request.token_ids);
    SampleContext context;
    context.params = &request.params;
    context.prompt_ids = all_ids.first(static_cast<size_t>(request.num_prompt_tokens));
    context.output_ids = all_ids.subspan(static_cast<size_t>(request.num_prompt_tokens));
    std::vector<int32_t> masked_ids = request.params.stop_token_ids;
    if (!request.params.ignore_eos)
        masked_ids.insert(masked_ids.end(), eos_ids.begin(), eos_ids.end());
    context.min_tokens_masked_ids = masked_ids;
    context.rng = &seq.request->rng;  // this sequence's own generator: rows may run in parallel
    sample.sampled = sample_token(row_of(rows.sample_row), context);
    return sample;
}

void Engine::Impl::commit_seq(const ScheduledSeq& seq, SeqSample& sample) {
    Request& request = *seq.request;
    for (TokenLogprobs& row : sample.prompt_logprobs) {
        request.prompt_logprobs.push_back(std::move(row));
    }
    sample.prompt_logprobs.clear();
    if (!sample.sampled.has_value())
        return;
    request.token_ids.push_back(sample.sampled->token_id);
    if (request.num_output_placeholders > 0)
        request.num_output_placeholders -= 1;
}

void Engine::Impl::emit_seq(Request& request, const SeqSample& sample) {
    if (!sample.sampled.has_value())
        return;
    const SampleResult& sampled = *sample.sampled;
    const bool first_token = request.num_output_tokens() == 1;
    record_token_timing(request, first_token);

    RequestOutput output;
    output.new_token_ids.push_back(sampled.token_id);
    if (sampled.logprobs.has_value())
        output.logprobs.push_back(*sampled.logprobs);
    if (first_token && request.wants_prompt_logprobs())
        output.prompt_logprobs = request.prompt_logprobs;
    FinishReason reason = check_token_stop(request, sampled.token_id, output);
    const bool stopped_by_token = reason == FinishReason::Stop;
    const bool check_stop = request.num_output_tokens() > request.params.min_tokens;
    TextUpdate text =
        request.output->add_token(sampled.token_id, stopped_by_token && !request.params.include_stop_str_in_output,
                                  check_stop && !stopped_by_token, reason != FinishReason::None);
    output.text_delta = std::move(text.text_delta);
    if (text.stop_string.has_value()) {
        reason = FinishReason::Stop;  // a stop string wins over a simultaneous length cap (as vLLM)
        output.stop_reason = *text.stop_string;
    }
    if (reason != FinishReason::None) {
        finish(&request, reason, std::move(output));
        return;
    }
    output.request_id = request.request_id;
    output.index = request.index;
    output.num_prompt_tokens = request.num_prompt_tokens;
    output.num_output_tokens = request.num_output_tokens();
    output.num_cached_tokens = std::max(request.num_cached_tokens, 0);
    request.stream->push(std::move(output));
}

void Engine::Impl::release_retired() {
    std::vector<RetiredSeq> kept;
    for (RetiredSeq& seq : retired) {
        if (seq.last_step <= last_collected_step) {
            kv.free(seq.request->seq_id);
        } else {
            kept.push_back(std::move(seq));
        }
    }
    retired = std::move(kept);
}

void Engine::Impl::settle_async() {
    if (in_flight.has_value()) {
        try {
            (void)model->collect();
        } catch (const std::exception& error) {
            K2_WARN("engine: dropping the step in flight: {}", error.what());
        }
        in_flight.reset();
    }
    last_collected_step = last_built_step;
    // Tokens the dropped step would have sampled never come: sequences that go on recompute without them.
    for (Request* request : scheduler.waiting())
        request->num_output_placeholders = 0;
}

}  // namespace k2
