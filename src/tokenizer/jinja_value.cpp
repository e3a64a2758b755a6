#include "tokenizer/jinja_value.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <iterator>

#include "core/error.h"

namespace k2::jinja {
namespace {

// Values built by a template can nest arbitrarily (`{% set ns.x = [ns.x] %}` in a loop); recursive walks
// stop at this depth with an error instead of exhausting the stack.
constexpr int kMaxDepth = 512;

struct DepthGuard {
    explicit DepthGuard(int& depth) : m_depth(depth) {
        if (++m_depth > kMaxDepth) {
            --m_depth;  // the destructor does not run when the constructor throws
            K2_FAIL("value nesting deeper than {}", kMaxDepth);
        }
    }
    ~DepthGuard() { --m_depth; }
    int& m_depth;
};

thread_local int t_depth = 0;

}  // namespace

Value Value::undefined(std::string name) {
    Value v;
    v.s = std::move(name);
    return v;
}
Value Value::none() {
    Value v;
    v.kind = Kind::None;
    return v;
}
Value Value::boolean(bool x) {
    Value v;
    v.kind = Kind::Bool;
    v.b = x;
    return v;
}
Value Value::integer(int64_t x) {
    Value v;
    v.kind = Kind::Int;
    v.i = x;
    return v;
}
Value Value::number(double x) {
    Value v;
    v.kind = Kind::Float;
    v.f = x;
    return v;
}
Value Value::string(std::string x) {
    Value v;
    v.kind = Kind::String;
    v.s = std::move(x);
    return v;
}
Value Value::make_list(List x) {
    Value v;
    v.kind = Kind::List;
    v.list = std::make_shared<List>(std::move(x));
    return v;
}
Value Value::make_dict(Dict x) {
    Value v;
    v.kind = Kind::Dict;
    v.dict = std::make_shared<Dict>(std::move(x));
    return v;
}
Value Value::make_function(Function fn) {
    Value v;
    v.kind = Kind::Function;
    v.function = std::make_shared<Function>(std::move(fn));
    return v;
}

Value Value::from_json(const nlohmann::ordered_json& json) {
    DepthGuard guard(t_depth);
    switch (json.type()) {
        case nlohmann::json::value_t::null: return none();
        case nlohmann::json::value_t::boolean: return boolean(json.get<bool>());
        case nlohmann::json::value_t::number_integer: return integer(json.get<int64_t>());
        case nlohmann::json::value_t::number_unsigned: {
            uint64_t u = json.get<uint64_t>();
            if (u <= static_cast<uint64_t>(INT64_MAX)) return integer(static_cast<int64_t>(u));
            return number(static_cast<double>(u));
        }
        case nlohmann::json::value_t::number_float: return number(json.get<double>());
        case nlohmann::json::value_t::string: return string(json.get<std::string>());
        case nlohmann::json::value_t::array: {
            List items;
            items.reserve(json.size());
            for (const auto& item : json) items.push_back(from_json(item));
            return make_list(std::move(items));
        }
        case nlohmann::json::value_t::object: {
            Dict items;
            items.reserve(json.size());
            for (const auto& [key, item] : json.items()) items.emplace_back(key, from_json(item));
            return make_dict(std::move(items));
        }
        default: return none();
    }
}

bool Value::truthy() const {
    switch (kind) {
        case Kind::Undefined:
        case Kind::None: return false;
        case Kind::Bool: return b;
        case Kind::Int: return i != 0;
        case Kind::Float: return f != 0.0;
        case Kind::String: return !s.empty();
        case Kind::List: return !list->empty();
        case Kind::Dict: return is_namespace || !dict->empty();
        case Kind::Function: return true;
    }
    return false;
}

double Value::as_double() const {
    if (kind == Kind::Int) return static_cast<double>(i);
    if (kind == Kind::Bool) return b ? 1.0 : 0.0;
    return f;
}

const Value* Value::find(const std::string& key) const {
    if (kind != Kind::Dict) return nullptr;
    for (const auto& entry : *dict) {
        if (entry.first == key) return &entry.second;
    }
    return nullptr;
}

const Value* CallArgs::get(size_t index, const char* name) const {
    if (index < positional.size()) return &positional[index];
    for (const auto& [key, value] : keyword) {
        if (key == name) return &value;
    }
    return nullptr;
}

bool equals(const Value& a, const Value& b) {
    DepthGuard guard(t_depth);
    if (a.is_number() && b.is_number()) {
        if (a.kind != Kind::Float && b.kind != Kind::Float) {
            int64_t x = a.kind == Kind::Bool ? a.b : a.i;
            int64_t y = b.kind == Kind::Bool ? b.b : b.i;
            return x == y;
        }
        return a.as_double() == b.as_double();
    }
    if (a.kind != b.kind) return false;
    switch (a.kind) {
        case Kind::Undefined:
        case Kind::None: return true;
        case Kind::String: return a.s == b.s;
        case Kind::List: {
            if (a.list->size() != b.list->size()) return false;
            for (size_t k = 0; k < a.list->size(); ++k) {
                if (!equals((*a.list)[k], (*b.list)[k])) return false;
            }
            return true;
        }
        case Kind::Dict: {
            if (a.dict->size() != b.dict->size()) return false;
            for (const auto& [key, value] : *a.dict) {
                const Value* other = b.find(key);
                if (other == nullptr || !equals(value, *other)) return false;
            }
            return true;
        }
        case Kind::Function: return a.function == b.function;
        default: return false;
    }
}

void append_float_repr(double v, std::string& out) {
    if (std::isnan(v)) {
        out += "nan";
        return;
    }
    if (std::isinf(v)) {
        out += v > 0 ? "inf" : "-inf";
        return;
    }
    // fmt's shortest round-trip form switches to exponent notation where Python's repr does
    // (exponent < -4 or >= 16); Python always shows a fractional part or an exponent.
    const size_t begin = out.size();
    fmt::format_to(std::back_inserter(out), "{}", v);
    if (out.find_first_of(".en", begin) == std::string::npos) out += ".0";
}

void append_int(int64_t v, std::string& out) {
    char buf[24];
    auto result = std::to_chars(buf, buf + sizeof(buf), v);
    out.append(buf, static_cast<size_t>(result.ptr - buf));
}

std::string float_repr(double v) {
    std::string out;
    append_float_repr(v, out);
    return out;
}

namespace {

std::string repr_string(const std::string& s) {
    char quote = (s.find('\'') != std::string::npos && s.find('"') == std::string::npos) ? '"' : '\'';
    std::string out(1, quote);
    for (char c : s) {
        auto u = static_cast<unsigned char>(c);
        if (c == quote || c == '\\') {
            out += '\\';
            out += c;
        } else if (c == '\n') {
            out += "\\n";
        } else if (c == '\r') {
            out += "\\r";
        } else if (c == '\t') {
            out += "\\t";
        } else if (u < 0x20 || u == 0x7f) {
            out += fmt::format("\\x{:02x}", u);
        } else {
            out += c;
        }
    }
    out += quote;
    return out;
}

void json_string(const std::string& s, std::string& out) {
    static const char kHex[] = "0123456789abcdef";
    out += '"';
    for (char c : s) {
        auto u = static_cast<unsigned char>(c);
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            case '\b': out += "\\b"; break;
            case '\f': out += "\\f"; break;
            default:
                if (u < 0x20) {
                    const char escape[6] = {'\\', 'u', '0', '0', kHex[u >> 4], kHex[u & 0xf]};
                    out.append(escape, sizeof(escape));
                } else {
                    out += c;
                }
        }
    }
    out += '"';
}

void json_dump(const Value& v, int indent, bool sort_keys, int depth, std::string& out);

void json_newline(int indent, int level, std::string& out) {
    out += '\n';
    out.append(static_cast<size_t>(indent) * static_cast<size_t>(level), ' ');
}

void json_dump_list(const List& items, int indent, bool sort_keys, int depth, std::string& out) {
    if (items.empty()) {
        out += "[]";
        return;
    }
    out += '[';
    bool first = true;
    for (const auto& item : items) {
        if (!first) out += indent >= 0 ? "," : ", ";
        first = false;
        if (indent >= 0) json_newline(indent, depth + 1, out);
        json_dump(item, indent, sort_keys, depth + 1, out);
    }
    if (indent >= 0) json_newline(indent, depth, out);
    out += ']';
}

void json_dump_dict(const Dict& dict, int indent, bool sort_keys, int depth, std::string& out) {
    if (dict.empty()) {
        out += "{}";
        return;
    }
    std::vector<const std::pair<std::string, Value>*> entries;
    entries.reserve(dict.size());
    for (const auto& entry : dict) entries.push_back(&entry);
    if (sort_keys) {
        std::stable_sort(entries.begin(), entries.end(),
                         [](const auto* a, const auto* b) { return a->first < b->first; });
    }
    out += '{';
    bool first = true;
    for (const auto* entry : entries) {
        if (!first) out += indent >= 0 ? "," : ", ";
        first = false;
        if (indent >= 0) json_newline(indent, depth + 1, out);
        json_string(entry->first, out);
        out += ": ";
        json_dump(entry->second, indent, sort_keys, depth + 1, out);
    }
    if (indent >= 0) json_newline(indent, depth, out);
    out += '}';
}

void json_dump(const Value& v, int indent, bool sort_keys, int depth, std::string& out) {
    if (depth >= kMaxDepth) throw_error("tojson: nesting too deep", std::source_location::current());
    switch (v.kind) {
        case Kind::None: out += "null"; return;
        case Kind::Bool: out += v.b ? "true" : "false"; return;
        case Kind::Int: append_int(v.i, out); return;
        case Kind::Float:
            if (std::isnan(v.f)) {
                out += "NaN";
            } else if (std::isinf(v.f)) {
                out += v.f > 0 ? "Infinity" : "-Infinity";
            } else {
                append_float_repr(v.f, out);
            }
            return;
        case Kind::String: json_string(v.s, out); return;
        case Kind::List: json_dump_list(*v.list, indent, sort_keys, depth, out); return;
        case Kind::Dict: json_dump_dict(*v.dict, indent, sort_keys, depth, out); return;
        case Kind::Undefined:
            throw_error("Object of type Undefined is not JSON serializable", std::source_location::current());
        case Kind::Function:
            throw_error("Object of type function is not JSON serializable", std::source_location::current());
    }
}

}  // namespace

std::string python_repr(const Value& v) {
    DepthGuard guard(t_depth);
    switch (v.kind) {
        case Kind::String: return repr_string(v.s);
        case Kind::Undefined: return "Undefined";
        case Kind::List: {
            std::string out = "[";
            for (size_t k = 0; k < v.list->size(); ++k) {
                if (k > 0) out += ", ";
                out += python_repr((*v.list)[k]);
            }
            return out + "]";
        }
        case Kind::Dict: {
            if (v.is_namespace) return "<Namespace>";
            std::string out = "{";
            bool first = true;
            for (const auto& [key, value] : *v.dict) {
                if (!first) out += ", ";
                first = false;
                out += repr_string(key) + ": " + python_repr(value);
            }
            return out + "}";
        }
        default: return python_str(v);
    }
}

std::string python_str(const Value& v) {
    switch (v.kind) {
        case Kind::Undefined: return "";
        case Kind::None: return "None";
        case Kind::Bool: return v.b ? "True" : "False";
        case Kind::Int: return std::to_string(v.i);
        case Kind::Float: return float_repr(v.f);
        case Kind::String: return v.s;
        case Kind::Function: return "<function>";
        default: return python_repr(v);
    }
}

std::string to_json(const Value& v, int indent, bool sort_keys) {
    std::string out;
    json_dump(v, indent, sort_keys, 0, out);
    return out;
}

std::string type_name(const Value& v) {
    switch (v.kind) {
        case Kind::Undefined: return "Undefined";
        case Kind::None: return "NoneType";
        case Kind::Bool: return "bool";
        case Kind::Int: return "int";
        case Kind::Float: return "float";
        case Kind::String: return "str";
        case Kind::List: return "list";
        case Kind::Dict: return "dict";
        case Kind::Function: return "function";
    }
    return "object";
}

}  // namespace k2::jinja
