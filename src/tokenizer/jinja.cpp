// Rendering of the Jinja subset: statements, expressions, filters, tests and Python methods.
#include "tokenizer/jinja.h"

#include <cmath>
#include <ctime>
#include <unordered_map>

#include "core/error.h"
#include "tokenizer/jinja_ast.h"
#include "tokenizer/jinja_builtins.h"

namespace k2::jinja {
namespace {

enum class Flow { Normal, Break, Continue };

class Renderer {
public:
    Renderer(const std::string& name, std::string& out) : m_name(name), m_out(out) {}

    [[noreturn]] void fail(int line, const std::string& message) const {
        K2_FAIL("{}:{}: {}", m_name, line, message);
    }

    void push_scope() { m_scopes.emplace_back(); }
    void pop_scope() { m_scopes.pop_back(); }
    void set(const std::string& name, Value v) { m_scopes.back()[name] = std::move(v); }
    Value lookup(const std::string& name) const {
        for (auto it = m_scopes.rbegin(); it != m_scopes.rend(); ++it) {
            auto found = it->find(name);
            if (found != it->end()) return found->second;
        }
        return Value::undefined(name);
    }

    Flow exec_body(const std::vector<std::unique_ptr<Node>>& body) {
        for (const auto& node : body) {
            Flow flow = exec(*node);
            if (flow != Flow::Normal) return flow;
        }
        return Flow::Normal;
    }

    Flow exec(const Node& n) {
        if (++m_steps > kMaxSteps) fail(n.line, "template rendering exceeded the step limit");
        switch (n.kind) {
            case NodeKind::Root: return exec_body(n.branches[0]);
            case NodeKind::Text: append(n, n.text); return Flow::Normal;
            case NodeKind::Output: append(n, python_str(eval(*n.expr))); return Flow::Normal;
            case NodeKind::If:
                for (size_t k = 0; k < n.branches.size(); ++k) {
                    if (k >= n.conditions.size() || eval(*n.conditions[k]).truthy()) return exec_body(n.branches[k]);
                }
                return Flow::Normal;
            case NodeKind::For: exec_for(n); return Flow::Normal;
            case NodeKind::Set: assign(n, eval(*n.expr)); return Flow::Normal;
            case NodeKind::SetBlock: {
                std::string captured;
                std::swap(captured, m_out);
                exec_body(n.branches[0]);
                std::swap(captured, m_out);
                assign(n, Value::string(captured));
                return Flow::Normal;
            }
            case NodeKind::Break: return Flow::Break;
            case NodeKind::Continue: return Flow::Continue;
            case NodeKind::Macro: define_macro(n); return Flow::Normal;
            case NodeKind::CallMacro: return Flow::Normal;
        }
        return Flow::Normal;
    }

    void append(const Node& n, const std::string& text) {
        if (m_out.size() + text.size() > kMaxOutput) fail(n.line, "template output exceeds 64 MiB");
        m_out += text;
    }

    void assign(const Node& n, Value v) {
        if (n.targets.size() == 1) {
            set(n.targets[0], std::move(v));
            return;
        }
        Value ns = lookup(n.targets[0]);
        if (ns.kind != Kind::Dict || !ns.is_namespace) {
            fail(n.line, fmt::format("cannot assign attribute on non-namespace object `{}`", n.targets[0]));
        }
        for (auto& entry : *ns.dict) {
            if (entry.first == n.targets[1]) {
                entry.second = std::move(v);
                return;
            }
        }
        ns.dict->emplace_back(n.targets[1], std::move(v));
    }

    void exec_for(const Node& n) {
        Value iterable = eval(*n.expr);
        List items = iterate(iterable, n.line);
        if (n.filter) {
            List kept;
            for (auto& item : items) {
                push_scope();
                bind_targets(n, item);
                bool keep = eval(*n.filter).truthy();
                pop_scope();
                if (keep) kept.push_back(std::move(item));
            }
            items = std::move(kept);
        }
        if (items.empty()) {
            push_scope();
            exec_body(n.branches[1]);
            pop_scope();
            return;
        }
        const auto length = static_cast<int64_t>(items.size());
        for (int64_t k = 0; k < length; ++k) {
            push_scope();
            Dict loop;
            loop.emplace_back("index", Value::integer(k + 1));
            loop.emplace_back("index0", Value::integer(k));
            loop.emplace_back("revindex", Value::integer(length - k));
            loop.emplace_back("revindex0", Value::integer(length - k - 1));
            loop.emplace_back("first", Value::boolean(k == 0));
            loop.emplace_back("last", Value::boolean(k == length - 1));
            loop.emplace_back("length", Value::integer(length));
            loop.emplace_back("previtem", k > 0 ? items[static_cast<size_t>(k - 1)] : Value::undefined("previtem"));
            loop.emplace_back("nextitem",
                              k + 1 < length ? items[static_cast<size_t>(k + 1)] : Value::undefined("nextitem"));
            set("loop", Value::make_dict(std::move(loop)));
            bind_targets(n, items[static_cast<size_t>(k)]);
            Flow flow = exec_body(n.branches[0]);
            pop_scope();
            if (flow == Flow::Break) break;
        }
    }

    void bind_targets(const Node& n, const Value& item) {
        if (n.targets.size() == 1) {
            set(n.targets[0], item);
            return;
        }
        List parts = iterate(item, n.line);
        if (parts.size() != n.targets.size()) {
            fail(n.line, fmt::format("cannot unpack {} values into {} loop variables", parts.size(), n.targets.size()));
        }
        for (size_t k = 0; k < parts.size(); ++k) set(n.targets[k], parts[k]);
    }

    List iterate(const Value& v, int line) const {
        switch (v.kind) {
            case Kind::Undefined: return {};
            case Kind::List: return *v.list;
            case Kind::Dict: {
                List keys;
                for (const auto& entry : *v.dict) keys.push_back(Value::string(entry.first));
                return keys;
            }
            case Kind::String: {
                List chars;
                for (const auto& c : split_code_points(v.s)) chars.push_back(Value::string(c));
                return chars;
            }
            default: fail(line, fmt::format("'{}' object is not iterable", type_name(v)));
        }
    }

    void define_macro(const Node& n) {
        const Node* macro = &n;
        set(n.name, Value::make_function([this, macro](CallArgs& args) {
            if (m_macro_depth >= kMaxMacroDepth) fail(macro->line, "macro recursion too deep");
            ++m_macro_depth;
            push_scope();
            for (size_t k = 0; k < macro->params.size(); ++k) {
                const Value* arg = args.get(k, macro->params[k].c_str());
                if (arg != nullptr) {
                    set(macro->params[k], *arg);
                } else if (macro->defaults[k]) {
                    set(macro->params[k], eval(*macro->defaults[k]));
                } else {
                    set(macro->params[k], Value::undefined(macro->params[k]));
                }
            }
            std::string captured;
            std::swap(captured, m_out);
            exec_body(macro->branches[0]);
            std::swap(captured, m_out);
            pop_scope();
            --m_macro_depth;
            return Value::string(captured);
        }));
    }

    Value eval(const Expr& e) {
        if (++m_steps > kMaxSteps) fail(e.line, "template rendering exceeded the step limit");
        try {
            return eval_inner(e);
        } catch (const BuiltinError& err) {
            fail(e.line, err.what());
        }
    }

    Value eval_inner(const Expr& e) {
        switch (e.kind) {
            case ExprKind::Literal: return e.value;
            case ExprKind::Name: return lookup(e.name);
            case ExprKind::Attr: return get_attr(eval(*e.children[0]), e.name);
            case ExprKind::Subscript: return get_item(eval(*e.children[0]), eval(*e.children[1]));
            case ExprKind::Slice:
                return slice(eval(*e.children[0]), eval(*e.children[1]), eval(*e.children[2]), eval(*e.children[3]));
            case ExprKind::Call: {
                Value fn = eval(*e.children[0]);
                CallArgs args = eval_args(e, 1);
                if (fn.kind != Kind::Function) {
                    throw BuiltinError(fmt::format("'{}' is not callable", fn.is_undefined() ? fn.s : type_name(fn)));
                }
                return (*fn.function)(args);
            }
            case ExprKind::Filter: {
                CallArgs args = eval_args(e, 1);
                return apply_filter(e.name, eval(*e.children[0]), args);
            }
            case ExprKind::Test: {
                CallArgs args = eval_args(e, 1);
                bool result = apply_test(e.name, eval(*e.children[0]), args);
                return Value::boolean(result != e.negated);
            }
            case ExprKind::Unary: {
                Value v = eval(*e.children[0]);
                if (e.name == "not") return Value::boolean(!v.truthy());
                return unary_op(e.name, v);
            }
            case ExprKind::Binary: {
                if (e.name == "and") {
                    Value left = eval(*e.children[0]);
                    return left.truthy() ? eval(*e.children[1]) : left;
                }
                if (e.name == "or") {
                    Value left = eval(*e.children[0]);
                    return left.truthy() ? left : eval(*e.children[1]);
                }
                return binary_op(e.name, eval(*e.children[0]), eval(*e.children[1]));
            }
            case ExprKind::Conditional: {
                if (eval(*e.children[0]).truthy()) return eval(*e.children[1]);
                return e.children.size() > 2 ? eval(*e.children[2]) : Value::undefined();
            }
            case ExprKind::ListLit: {
                List items;
                for (const auto& child : e.children) items.push_back(eval(*child));
                return Value::make_list(std::move(items));
            }
            case ExprKind::DictLit: {
                Dict items;
                for (size_t k = 0; k + 1 < e.children.size(); k += 2) {
                    Value key = eval(*e.children[k]);
                    std::string key_text = key.is_string() ? key.s : python_str(key);
                    Value value = eval(*e.children[k + 1]);
                    bool replaced = false;
                    for (auto& entry : items) {
                        if (entry.first == key_text) {
                            entry.second = value;
                            replaced = true;
                        }
                    }
                    if (!replaced) items.emplace_back(key_text, std::move(value));
                }
                return Value::make_dict(std::move(items));
            }
        }
        return Value::undefined();
    }

    CallArgs eval_args(const Expr& e, size_t first) {
        CallArgs args;
        const size_t num_kw = e.kwarg_names.size();
        const size_t num_pos = e.children.size() - first - num_kw;
        for (size_t k = 0; k < num_pos; ++k) args.positional.push_back(eval(*e.children[first + k]));
        for (size_t k = 0; k < num_kw; ++k) {
            args.keyword.emplace_back(e.kwarg_names[k], eval(*e.children[first + num_pos + k]));
        }
        return args;
    }

private:
    // Bounds on runaway templates (e.g. under the fuzzer); real chat templates stay far below them.
    static constexpr int64_t kMaxSteps = 5'000'000;
    static constexpr size_t kMaxOutput = size_t{64} << 20;
    static constexpr int kMaxMacroDepth = 64;
    int m_macro_depth = 0;
    const std::string& m_name;
    std::string& m_out;
    std::vector<std::unordered_map<std::string, Value>> m_scopes;
    int64_t m_steps = 0;
};

}  // namespace

Template::Template(const std::string& source, std::string name) : m_name(std::move(name)) {
    m_root = parse_template(source, m_name);
}
Template::~Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;

std::string Template::render(const nlohmann::ordered_json& context) const {
    std::string out;
    Renderer renderer(m_name, out);
    renderer.push_scope();
    for (const auto& [name, fn] : global_functions()) renderer.set(name, fn);
    renderer.push_scope();
    if (context.is_object()) {
        for (const auto& [key, value] : context.items()) renderer.set(key, Value::from_json(value));
    }
    renderer.exec(*m_root);
    return out;
}

}  // namespace k2::jinja
