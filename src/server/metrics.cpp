#include "server/metrics.h"

#include <fmt/format.h>

#include "engine/engine.h"

namespace k2::server {

namespace {

// Label values escape backslash, double quote and newline.
std::string escape_label(const std::string& value) {
    std::string out;
    for (const char c : value) {
        if (c == '\\' || c == '"')
            out += '\\';
        if (c == '\n') {
            out += "\\n";
            continue;
        }
        out += c;
    }
    return out;
}

std::string format_value(double value) {
    return fmt::format("{}", value);
}

class Writer {
public:
    explicit Writer(const std::string& model_name, int engine_index = 0)
        : m_labels(fmt::format("engine=\"{}\",model_name=\"{}\"", engine_index, escape_label(model_name))) {}

    void header(const std::string& name, const char* type, const char* help) {
        m_text += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
    }
    void gauge(const std::string& name, const char* help, double value) {
        header(name, "gauge", help);
        m_text += fmt::format("{}{{{}}} {}\n", name, m_labels, format_value(value));
    }
    void counter(const std::string& name, const char* help, double value) {
        header(name + "_total", "counter", help);  // as prometheus_client writes counters
        m_text += fmt::format("{}_total{{{}}} {}\n", name, m_labels, format_value(value));
    }
    void histogram(const std::string& name, const char* help, const Histogram& h) {
        header(name, "histogram", help);
        for (size_t i = 0; i < h.bounds.size(); ++i) {
            const uint64_t count = i < h.counts.size() ? h.counts[i] : h.count;
            m_text += fmt::format("{}_bucket{{{},le=\"{}\"}} {}\n", name, m_labels, format_value(h.bounds[i]), count);
        }
        m_text += fmt::format("{}_bucket{{{},le=\"+Inf\"}} {}\n", name, m_labels, h.count);
        m_text += fmt::format("{}_sum{{{}}} {}\n", name, m_labels, format_value(h.sum));
        m_text += fmt::format("{}_count{{{}}} {}\n", name, m_labels, h.count);
    }
    void raw(const std::string& text) { m_text += text; }
    const std::string& labels() const { return m_labels; }
    std::string take() { return std::move(m_text); }

private:
    std::string m_labels;
    std::string m_text;
};

}  // namespace

std::string render_prometheus(const EngineStats& stats, const std::string& model_name, const EngineConfig& config,
                              int engine_index) {
    Writer w(model_name, engine_index);
    w.gauge("vllm:num_requests_running", "Number of requests in model execution batches.", stats.num_running);
    w.gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", stats.num_waiting);
    w.gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", stats.kv_usage);
    w.gauge("vllm:gpu_cache_usage_perc", "KV-cache usage (old name). 1 means 100 percent usage.", stats.kv_usage);
    w.gauge("k2:kv_cache_used_blocks", "KV blocks held by requests.", stats.num_total_blocks - stats.num_free_blocks);
    w.gauge("k2:kv_cache_total_blocks", "KV blocks in the pool.", stats.num_total_blocks);
    w.counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.",
              static_cast<double>(stats.prefix_cache_queries));
    w.counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.",
              static_cast<double>(stats.prefix_cache_hits));
    w.counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.",
              static_cast<double>(stats.preemptions));
    w.counter("vllm:prompt_tokens", "Number of prefill tokens processed.", static_cast<double>(stats.prompt_tokens));
    w.counter("vllm:generation_tokens", "Number of generation tokens processed.",
              static_cast<double>(stats.generation_tokens));
    w.header("vllm:request_success_total", "counter", "Count of successfully processed requests.");
    for (const char* reason : {"stop", "length", "abort", "error"}) {
        const auto it = stats.requests_finished_by_reason.find(reason);
        const uint64_t value = it == stats.requests_finished_by_reason.end() ? 0 : it->second;
        w.raw(fmt::format("vllm:request_success_total{{{},finished_reason=\"{}\"}} {}\n", w.labels(), reason, value));
    }
    w.histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                stats.time_to_first_token_seconds);
    w.histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                stats.inter_token_latency_seconds);
    w.histogram("vllm:time_per_output_token_seconds", "Histogram of time per output token in seconds.",
                stats.inter_token_latency_seconds);
    w.histogram("vllm:request_time_per_output_token_seconds", "Histogram of time_per_output_token_seconds per request.",
                stats.time_per_output_token_seconds);
    w.histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                stats.e2e_request_latency_seconds);
    w.histogram("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.",
                stats.request_queue_time_seconds);
    w.histogram("vllm:request_inference_time_seconds", "Histogram of time spent in RUNNING phase for request.",
                stats.request_inference_time_seconds);
    w.histogram("vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.",
                stats.request_prefill_time_seconds);
    w.histogram("vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.",
                stats.request_decode_time_seconds);
    w.histogram("vllm:request_params_n", "Histogram of the n request parameter.", stats.request_params_n);
    w.histogram("vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.",
                stats.request_params_max_tokens);
    w.histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.", stats.request_prompt_tokens);
    w.histogram("vllm:request_generation_tokens", "Number of generation tokens processed.",
                stats.request_generation_tokens);
    w.histogram("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.",
                stats.iteration_tokens);
    w.header("vllm:cache_config_info", "gauge", "Information of the LLMEngine CacheConfig");
    w.raw(fmt::format(
        "vllm:cache_config_info{{{},block_size=\"{}\",enable_prefix_caching=\"{}\",num_gpu_blocks=\"{}\"}} 1\n",
        w.labels(), kKvBlockSize, config.enable_prefix_caching ? "True" : "False", stats.num_total_blocks));
    return w.take();
}

namespace {

// Splits a rendering into metric families, each starting at its "# HELP" line.
std::vector<std::string> split_families(const std::string& text) {
    std::vector<std::string> families;
    size_t pos = 0;
    while (pos < text.size()) {
        size_t next = text.find("\n# HELP ", pos);
        next = next == std::string::npos ? text.size() : next + 1;
        families.push_back(text.substr(pos, next - pos));
        pos = next;
    }
    return families;
}

}  // namespace

std::string render_prometheus(const std::vector<EngineStats>& stats, const std::string& model_name,
                              const EngineConfig& config) {
    std::vector<std::vector<std::string>> per_engine;
    for (size_t i = 0; i < stats.size(); ++i) {
        per_engine.push_back(split_families(render_prometheus(stats[i], model_name, config, static_cast<int>(i))));
    }
    std::string out;
    for (size_t f = 0; !per_engine.empty() && f < per_engine[0].size(); ++f) {
        out += per_engine[0][f];  // "# HELP" and "# TYPE" once, then every engine's samples
        for (size_t i = 1; i < per_engine.size(); ++i) {
            const std::string& family = per_engine[i][f];
            const size_t type_line = family.find("\n# TYPE ");
            const size_t samples = family.find('\n', type_line + 1);
            out += family.substr(samples + 1);
        }
    }
    return out;
}

std::string render_server_metrics(int num_active_requests, const std::string& model_name) {
    Writer w(model_name);
    w.gauge("k2:http_requests_in_flight", "Generation requests the HTTP server is answering.", num_active_requests);
    return w.take();
}

}  // namespace k2::server
