#include "tokenizer/jinja_builtins.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <ctime>

namespace k2::jinja {
namespace {

[[noreturn]] void fail(const std::string& message) { throw BuiltinError(message); }

void check_defined(const Value& v) {
    if (v.is_undefined()) fail(v.s.empty() ? "value is undefined" : fmt::format("'{}' is undefined", v.s));
}

bool is_py_space(const std::string& s, size_t i, size_t& len) {
    auto c = static_cast<unsigned char>(s[i]);
    len = 1;
    if (c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f)) return true;
    if (c == 0xc2 && i + 1 < s.size() && (static_cast<unsigned char>(s[i + 1]) == 0x85 ||
                                          static_cast<unsigned char>(s[i + 1]) == 0xa0)) {
        len = 2;
        return true;
    }
    if (c == 0xe3 && s.compare(i, 3, "\xe3\x80\x80") == 0) {
        len = 3;
        return true;
    }
    if (c == 0xe2 && i + 2 < s.size()) {
        auto b1 = static_cast<unsigned char>(s[i + 1]), b2 = static_cast<unsigned char>(s[i + 2]);
        if ((b1 == 0x80 && (b2 <= 0x8a || b2 == 0xa8 || b2 == 0xa9 || b2 == 0xaf)) || (b1 == 0x81 && b2 == 0x9f)) {
            len = 3;
            return true;
        }
    }
    if (c == 0xe1 && s.compare(i, 3, "\xe1\x9a\x80") == 0) {
        len = 3;
        return true;
    }
    return false;
}

// str.strip() / lstrip() / rstrip() with Python's whitespace, or with an explicit character set.
std::string strip(const std::string& s, bool left, bool right, const Value* chars) {
    std::vector<std::string> cps = split_code_points(s);
    std::vector<std::string> set;
    if (chars != nullptr && chars->is_string()) set = split_code_points(chars->s);
    auto strippable = [&](const std::string& cp) {
        if (chars != nullptr && chars->is_string()) return std::find(set.begin(), set.end(), cp) != set.end();
        size_t len = 0;
        return is_py_space(cp, 0, len) && len == cp.size();
    };
    size_t b = 0, e = cps.size();
    if (left) {
        while (b < e && strippable(cps[b])) ++b;
    }
    if (right) {
        while (e > b && strippable(cps[e - 1])) --e;
    }
    std::string out;
    for (size_t k = b; k < e; ++k) out += cps[k];
    return out;
}

std::string to_lower(std::string s) {
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}
std::string to_upper(std::string s) {
    for (auto& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return s;
}

std::string replace_all(const std::string& s, const std::string& from, const std::string& to, int64_t count) {
    if (from.empty()) {
        std::string out = to;
        for (const auto& cp : split_code_points(s)) out += cp + to;
        return out;
    }
    std::string out;
    size_t pos = 0;
    int64_t done = 0;
    for (size_t at = s.find(from); at != std::string::npos && (count < 0 || done < count); at = s.find(from, pos)) {
        out.append(s, pos, at - pos);
        out += to;
        pos = at + from.size();
        ++done;
    }
    out.append(s, pos, std::string::npos);
    return out;
}

Value split(const std::string& s, const Value* sep, const Value* maxsplit) {
    int64_t limit = maxsplit != nullptr && maxsplit->kind == Kind::Int ? maxsplit->i : -1;
    List parts;
    if (sep == nullptr || sep->is_none()) {
        size_t i = 0, len = 0;
        while (i < s.size()) {
            while (i < s.size() && is_py_space(s, i, len)) i += len;
            if (i >= s.size()) break;
            if (limit >= 0 && static_cast<int64_t>(parts.size()) == limit) {
                parts.push_back(Value::string(strip(s.substr(i), false, true, nullptr)));
                break;
            }
            size_t j = i;
            while (j < s.size() && !is_py_space(s, j, len)) ++j;
            parts.push_back(Value::string(s.substr(i, j - i)));
            i = j;
        }
        return Value::make_list(std::move(parts));
    }
    if (!sep->is_string() || sep->s.empty()) fail("empty separator");
    size_t pos = 0;
    for (size_t at = s.find(sep->s); at != std::string::npos; at = s.find(sep->s, pos)) {
        if (limit >= 0 && static_cast<int64_t>(parts.size()) == limit) break;
        parts.push_back(Value::string(s.substr(pos, at - pos)));
        pos = at + sep->s.size();
    }
    parts.push_back(Value::string(s.substr(pos)));
    return Value::make_list(std::move(parts));
}

int64_t length_of(const Value& v) {
    switch (v.kind) {
        case Kind::Undefined: return 0;
        case Kind::String: return static_cast<int64_t>(split_code_points(v.s).size());
        case Kind::List: return static_cast<int64_t>(v.list->size());
        case Kind::Dict: return static_cast<int64_t>(v.dict->size());
        default: fail(fmt::format("object of type '{}' has no len()", type_name(v)));
    }
}

List items_of(const Value& v) {
    if (v.kind != Kind::Dict) fail(fmt::format("'{}' object has no attribute 'items'", type_name(v)));
    List out;
    for (const auto& [key, value] : *v.dict) out.push_back(Value::make_list({Value::string(key), value}));
    return out;
}

List to_list(const Value& v) {
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
        default: fail(fmt::format("'{}' object is not iterable", type_name(v)));
    }
}

// Bound methods of a str (strip, split, replace, startswith, join, ...).
Value string_method(const Value& self, const std::string& name) {
    const std::string s = self.s;
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
        return Value::make_function([s, name](CallArgs& a) {
            return Value::string(strip(s, name != "rstrip", name != "lstrip", a.get(0, "chars")));
        });
    }
    if (name == "lower") return Value::make_function([s](CallArgs&) { return Value::string(to_lower(s)); });
    if (name == "upper") return Value::make_function([s](CallArgs&) { return Value::string(to_upper(s)); });
    if (name == "startswith" || name == "endswith") {
        return Value::make_function([s, name](CallArgs& a) {
            const Value* x = a.get(0, "prefix");
            if (x == nullptr) fail(name + "() takes at least 1 argument");
            List options = x->kind == Kind::List ? *x->list : List{*x};
            for (const auto& o : options) {
                if (!o.is_string()) fail(name + "() argument must be str");
                bool hit = name == "startswith" ? s.compare(0, o.s.size(), o.s) == 0
                                                : s.size() >= o.s.size() &&
                                                      s.compare(s.size() - o.s.size(), o.s.size(), o.s) == 0;
                if (hit) return Value::boolean(true);
            }
            return Value::boolean(false);
        });
    }
    if (name == "split") {
        return Value::make_function([s](CallArgs& a) { return split(s, a.get(0, "sep"), a.get(1, "maxsplit")); });
    }
    if (name == "replace") {
        return Value::make_function([s](CallArgs& a) {
            const Value* from = a.get(0, "old");
            const Value* to = a.get(1, "new");
            const Value* count = a.get(2, "count");
            if (from == nullptr || to == nullptr || !from->is_string() || !to->is_string()) {
                fail("replace() takes two string arguments");
            }
            return Value::string(replace_all(s, from->s, to->s, count && count->kind == Kind::Int ? count->i : -1));
        });
    }
    if (name == "join") {
        return Value::make_function([s](CallArgs& a) {
            const Value* items = a.get(0, "iterable");
            if (items == nullptr) fail("join() takes one argument");
            std::string out;
            bool first = true;
            for (const auto& item : to_list(*items)) {
                if (!item.is_string()) fail("join() expects strings");
                if (!first) out += s;
                first = false;
                out += item.s;
            }
            return Value::string(out);
        });
    }
    if (name == "title" || name == "capitalize") {
        return Value::make_function([s, name](CallArgs&) {
            std::string out = to_lower(s);
            bool start = true;
            for (auto& c : out) {
                if (start && std::isalpha(static_cast<unsigned char>(c))) {
                    c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
                }
                start = name == "title" ? !std::isalpha(static_cast<unsigned char>(c)) : false;
            }
            return Value::string(out);
        });
    }
    return Value::undefined(name);
}

// Bound methods of a dict (get, items, keys, values).
Value dict_method(const Value& self, const std::string& name) {
    const Value d = self;
    if (name == "get") {
        return Value::make_function([d](CallArgs& a) {
            const Value* key = a.get(0, "key");
            if (key == nullptr) fail("get() takes at least 1 argument");
            const Value* found = key->is_string() ? d.find(key->s) : nullptr;
            if (found != nullptr) return *found;
            const Value* fallback = a.get(1, "default");
            return fallback != nullptr ? *fallback : Value::none();
        });
    }
    if (name == "items") return Value::make_function([d](CallArgs&) { return Value::make_list(items_of(d)); });
    if (name == "keys") return Value::make_function([d](CallArgs&) { return Value::make_list(to_list(d)); });
    if (name == "values") {
        return Value::make_function([d](CallArgs&) {
            List values;
            for (const auto& entry : *d.dict) values.push_back(entry.second);
            return Value::make_list(std::move(values));
        });
    }
    return Value::undefined(name);
}

// A bound method of a str, dict or list value; mutating methods fail as in jinja2's sandbox.
Value method(const Value& self, const std::string& name) {
    if (self.is_string()) return string_method(self, name);
    if (self.kind == Kind::Dict && !self.is_namespace) {
        Value m = dict_method(self, name);
        if (!m.is_undefined()) return m;
    }
    if (self.kind == Kind::List || self.kind == Kind::Dict) {
        static const char* const kMutators[] = {"append", "extend", "pop", "insert", "remove", "clear", "update",
                                                "setdefault", "sort", "reverse"};
        for (const char* m : kMutators) {
            if (name == m) {
                return Value::make_function([name, t = type_name(self)](CallArgs&) -> Value {
                    fail(fmt::format("access to attribute '{}' of '{}' object is unsafe", name, t));
                });
            }
        }
    }
    return Value::undefined(name);
}

int64_t normalize_index(int64_t index, int64_t size) { return index < 0 ? index + size : index; }

}  // namespace

std::vector<std::string> split_code_points(const std::string& s) {
    std::vector<std::string> out;
    for (size_t i = 0; i < s.size();) {
        auto c = static_cast<unsigned char>(s[i]);
        size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 1;
        len = std::min(len, s.size() - i);
        out.push_back(s.substr(i, len));
        i += len;
    }
    return out;
}

Value get_attr(const Value& obj, const std::string& name) {
    check_defined(obj);
    Value m = method(obj, name);
    if (!m.is_undefined()) return m;
    if (obj.kind == Kind::Dict) {
        const Value* found = obj.find(name);
        if (found != nullptr) return *found;
    }
    return Value::undefined(name);
}

Value get_item(const Value& obj, const Value& key) {
    check_defined(obj);
    if (obj.kind == Kind::Dict) {
        if (key.is_string()) {
            const Value* found = obj.find(key.s);
            if (found != nullptr) return *found;
            return get_attr(obj, key.s);
        }
        return Value::undefined(python_str(key));
    }
    if ((obj.kind == Kind::List || obj.kind == Kind::String) && (key.kind == Kind::Int || key.kind == Kind::Bool)) {
        int64_t raw = key.kind == Kind::Bool ? key.b : key.i;
        if (obj.kind == Kind::List) {
            int64_t index = normalize_index(raw, static_cast<int64_t>(obj.list->size()));
            if (index < 0 || index >= static_cast<int64_t>(obj.list->size())) return Value::undefined("[index]");
            return (*obj.list)[static_cast<size_t>(index)];
        }
        auto cps = split_code_points(obj.s);
        int64_t index = normalize_index(raw, static_cast<int64_t>(cps.size()));
        if (index < 0 || index >= static_cast<int64_t>(cps.size())) return Value::undefined("[index]");
        return Value::string(cps[static_cast<size_t>(index)]);
    }
    if (key.is_string()) return get_attr(obj, key.s);
    return Value::undefined(python_str(key));
}

Value slice(const Value& obj, const Value& start, const Value& stop, const Value& step) {
    check_defined(obj);
    List items = obj.is_string() ? to_list(obj) : obj.kind == Kind::List ? *obj.list : List{};
    if (!obj.is_string() && obj.kind != Kind::List) fail(fmt::format("'{}' object is not subscriptable", type_name(obj)));
    const auto n = static_cast<int64_t>(items.size());
    auto as_int = [](const Value& v, int64_t fallback) {
        if (v.is_undefined() || v.is_none()) return fallback;
        if (v.kind != Kind::Int) fail("slice indices must be integers");
        return v.i;
    };
    int64_t st = as_int(step, 1);
    if (st == 0) fail("slice step cannot be zero");
    int64_t lo = as_int(start, st > 0 ? 0 : n - 1);
    int64_t hi = as_int(stop, st > 0 ? n : -n - 1);
    auto clamp = [&](int64_t x, bool is_stop) {
        if (x < 0) x += n;
        if (st > 0) return std::clamp<int64_t>(x, 0, n);
        return std::clamp<int64_t>(x, is_stop ? -1 : -1, n - 1);
    };
    lo = clamp(lo, false);
    hi = clamp(hi, true);
    List out;
    for (int64_t k = lo; st > 0 ? k < hi : k > hi; k += st) out.push_back(items[static_cast<size_t>(k)]);
    if (!obj.is_string()) return Value::make_list(std::move(out));
    std::string s;
    for (const auto& c : out) s += c.s;
    return Value::string(s);
}

Value unary_op(const std::string& op, const Value& v) {
    if (v.kind == Kind::Int || v.kind == Kind::Bool) {
        int64_t x = v.kind == Kind::Bool ? v.b : v.i;
        return Value::integer(op == "-" ? -x : x);
    }
    if (v.kind == Kind::Float) return Value::number(op == "-" ? -v.f : v.f);
    fail(fmt::format("bad operand type for unary {}: '{}'", op, type_name(v)));
}

namespace {

bool less_than(const Value& a, const Value& b) {
    if (a.is_number() && b.is_number()) return a.as_double() < b.as_double();
    if (a.is_string() && b.is_string()) return a.s < b.s;
    fail(fmt::format("'<' not supported between instances of '{}' and '{}'", type_name(a), type_name(b)));
}

bool contains(const Value& container, const Value& item) {
    switch (container.kind) {
        case Kind::String:
            if (!item.is_string()) fail("'in <string>' requires string as left operand");
            return container.s.find(item.s) != std::string::npos;
        case Kind::List:
            return std::any_of(container.list->begin(), container.list->end(),
                               [&](const Value& x) { return equals(x, item); });
        case Kind::Dict: return item.is_string() && container.find(item.s) != nullptr;
        default: check_defined(container); fail(fmt::format("argument of type '{}' is not iterable", type_name(container)));
    }
}

}  // namespace

namespace {

// Bounds on values a template can build by repeated doubling (fuzzer inputs); real templates stay far below.
constexpr size_t kMaxStringBytes = size_t{16} << 20;
constexpr size_t kMaxListItems = size_t{1} << 20;

Value checked_string(std::string s) {
    if (s.size() > kMaxStringBytes) fail("string result exceeds 16 MiB");
    return Value::string(std::move(s));
}

}  // namespace

Value binary_op(const std::string& op, const Value& a, const Value& b) {
    if (op == "==") return Value::boolean(equals(a, b));
    if (op == "!=") return Value::boolean(!equals(a, b));
    if (op == "~") return checked_string(python_str(a) + python_str(b));
    if (op == "in") return Value::boolean(contains(b, a));
    if (op == "not in") return Value::boolean(!contains(b, a));
    if (op == "<") return Value::boolean(less_than(a, b));
    if (op == ">") return Value::boolean(less_than(b, a));
    if (op == "<=") return Value::boolean(!less_than(b, a));
    if (op == ">=") return Value::boolean(!less_than(a, b));
    check_defined(a);
    check_defined(b);
    if (op == "+") {
        if (a.is_string() && b.is_string()) return checked_string(a.s + b.s);
        if (a.kind == Kind::List && b.kind == Kind::List) {
            if (a.list->size() + b.list->size() > kMaxListItems) fail("list result exceeds 2^20 items");
            List out = *a.list;
            out.insert(out.end(), b.list->begin(), b.list->end());
            return Value::make_list(std::move(out));
        }
    }
    if (op == "*" && a.is_string() && b.kind == Kind::Int) {
        std::string out;
        for (int64_t k = 0; k < b.i && out.size() <= kMaxStringBytes; ++k) out += a.s;
        return checked_string(std::move(out));
    }
    if (!a.is_number() || !b.is_number()) {
        fail(fmt::format("unsupported operand type(s) for {}: '{}' and '{}'", op, type_name(a), type_name(b)));
    }
    const bool ints = a.kind != Kind::Float && b.kind != Kind::Float;
    const int64_t x = a.kind == Kind::Bool ? a.b : a.i, y = b.kind == Kind::Bool ? b.b : b.i;
    const double fx = a.as_double(), fy = b.as_double();
    if (op == "+") return ints ? Value::integer(x + y) : Value::number(fx + fy);
    if (op == "-") return ints ? Value::integer(x - y) : Value::number(fx - fy);
    if (op == "*") return ints ? Value::integer(x * y) : Value::number(fx * fy);
    if (op == "/") {
        if (fy == 0.0) fail("division by zero");
        return Value::number(fx / fy);
    }
    if (op == "//" || op == "%") {
        if (fy == 0.0) fail("integer division or modulo by zero");
        if (ints) {
            int64_t q = x / y, r = x % y;
            if (r != 0 && ((r < 0) != (y < 0))) {
                --q;
                r += y;
            }
            return Value::integer(op == "//" ? q : r);
        }
        double q = std::floor(fx / fy);
        return Value::number(op == "//" ? q : fx - q * fy);
    }
    if (op == "**") {
        if (ints && y >= 0) {
            int64_t r = 1;
            for (int64_t k = 0; k < y && k < 64; ++k) r *= x;
            return Value::integer(r);
        }
        return Value::number(std::pow(fx, fy));
    }
    fail(fmt::format("unknown operator {}", op));
}

Value apply_filter(const std::string& name, const Value& v, CallArgs& args) {
    if (name == "tojson") {
        const Value* indent = args.get(0, "indent");
        const Value* sort_keys = args.get(1, "sort_keys");
        int ind = indent != nullptr && indent->kind == Kind::Int ? static_cast<int>(indent->i) : -1;
        return Value::string(to_json(v, ind, sort_keys != nullptr && sort_keys->truthy()));
    }
    if (name == "length" || name == "count") return Value::integer(length_of(v));
    if (name == "trim") {
        check_defined(v);
        return Value::string(strip(python_str(v), true, true, args.get(0, "chars")));
    }
    if (name == "string") return Value::string(python_str(v));
    if (name == "lower") return Value::string(to_lower(python_str(v)));
    if (name == "upper") return Value::string(to_upper(python_str(v)));
    if (name == "default" || name == "d") {
        const Value* fallback = args.get(0, "default_value");
        const Value* boolean = args.get(1, "boolean");
        bool use_fallback = v.is_undefined() || (boolean != nullptr && boolean->truthy() && !v.truthy());
        if (use_fallback) return fallback != nullptr ? *fallback : Value::string("");
        return v;
    }
    if (name == "join") {
        const Value* sep = args.get(0, "d");
        const Value* attribute = args.get(1, "attribute");
        std::string out;
        bool first = true;
        for (const auto& item : to_list(v)) {
            if (!first) out += sep != nullptr ? python_str(*sep) : "";
            first = false;
            out += python_str(attribute != nullptr ? get_item(item, *attribute) : item);
        }
        return Value::string(out);
    }
    if (name == "first" || name == "last") {
        List items = to_list(v);
        if (items.empty()) return Value::undefined(name);
        return name == "first" ? items.front() : items.back();
    }
    if (name == "list") return Value::make_list(to_list(v));
    if (name == "items") return Value::make_list(v.is_undefined() ? List{} : items_of(v));
    if (name == "reverse") {
        if (v.is_string()) {
            auto cps = split_code_points(v.s);
            std::string out;
            for (auto it = cps.rbegin(); it != cps.rend(); ++it) out += *it;
            return Value::string(out);
        }
        List items = to_list(v);
        std::reverse(items.begin(), items.end());
        return Value::make_list(std::move(items));
    }
    if (name == "replace") {
        const Value* from = args.get(0, "old");
        const Value* to = args.get(1, "new");
        if (from == nullptr || to == nullptr) fail("replace filter takes two arguments");
        return Value::string(replace_all(python_str(v), python_str(*from), python_str(*to), -1));
    }
    if (name == "int") {
        if (v.kind == Kind::Float) return Value::integer(static_cast<int64_t>(v.f));
        if (v.kind == Kind::Int || v.kind == Kind::Bool) return Value::integer(v.kind == Kind::Bool ? v.b : v.i);
        try {
            return Value::integer(std::stoll(python_str(v)));
        } catch (const std::exception&) {
            return Value::integer(0);
        }
    }
    if (name == "abs") return v.kind == Kind::Float ? Value::number(std::fabs(v.f)) : unary_op(v.kind == Kind::Int && v.i < 0 ? "-" : "+", v);
    if (name == "capitalize" || name == "title") {
        CallArgs none;
        return (*method(Value::string(python_str(v)), name).function)(none);
    }
    if (name == "map" || name == "selectattr" || name == "rejectattr") {
        List out;
        const Value* attribute = name == "map" ? args.get(99, "attribute") : args.get(0, "attribute");
        for (const auto& item : to_list(v)) {
            if (name == "map") {
                if (attribute == nullptr) fail("map filter needs attribute=");
                out.push_back(get_item(item, *attribute));
                continue;
            }
            if (attribute == nullptr) fail(name + " filter needs an attribute");
            Value field = get_item(item, *attribute);
            bool pass = field.truthy();
            if (args.positional.size() > 1 && args.positional[1].is_string()) {
                CallArgs test_args;
                test_args.positional.assign(args.positional.begin() + 2, args.positional.end());
                pass = apply_test(args.positional[1].s, field, test_args);
            }
            if (pass == (name == "selectattr")) out.push_back(item);
        }
        return Value::make_list(std::move(out));
    }
    if (name == "safe" || name == "e" || name == "escape") return v;
    fail(fmt::format("no filter named '{}'", name));
}

bool apply_test(const std::string& name, const Value& v, CallArgs& args) {
    const Value* arg = args.get(0, "other");
    if (name == "defined") return !v.is_undefined();
    if (name == "undefined") return v.is_undefined();
    if (name == "none") return v.is_none();
    if (name == "string") return v.is_string();
    if (name == "number") return v.is_number();
    if (name == "integer") return v.kind == Kind::Int;
    if (name == "float") return v.kind == Kind::Float;
    if (name == "boolean") return v.kind == Kind::Bool;
    if (name == "true") return v.kind == Kind::Bool && v.b;
    if (name == "false") return v.kind == Kind::Bool && !v.b;
    if (name == "mapping") return v.kind == Kind::Dict;
    if (name == "sequence") return v.kind == Kind::List || v.kind == Kind::Dict || v.is_string();
    if (name == "iterable") return v.kind == Kind::List || v.kind == Kind::Dict || v.is_string() || v.is_undefined();
    if (name == "callable") return v.kind == Kind::Function;
    if (name == "lower") return v.is_string() && to_lower(v.s) == v.s;
    if (name == "upper") return v.is_string() && to_upper(v.s) == v.s;
    if (name == "odd" || name == "even") {
        if (v.kind != Kind::Int) fail(fmt::format("test '{}' needs an integer", name));
        return (v.i % 2 != 0) == (name == "odd");
    }
    if (name == "divisibleby") {
        if (v.kind != Kind::Int || arg == nullptr || arg->kind != Kind::Int || arg->i == 0) fail("divisibleby needs integers");
        return v.i % arg->i == 0;
    }
    if (arg == nullptr && (name == "eq" || name == "equalto" || name == "==" || name == "sameas" || name == "in")) {
        fail(fmt::format("test '{}' takes one argument", name));
    }
    if (name == "eq" || name == "equalto") return equals(v, *arg);
    if (name == "ne") return arg != nullptr && !equals(v, *arg);
    if (name == "sameas") return equals(v, *arg) && v.kind == arg->kind;
    if (name == "in") return binary_op("in", v, *arg).b;
    fail(fmt::format("no test named '{}'", name));
}

const std::vector<std::pair<std::string, Value>>& global_functions() {
    static const std::vector<std::pair<std::string, Value>> globals = [] {
        std::vector<std::pair<std::string, Value>> g;
        g.emplace_back("raise_exception", Value::make_function([](CallArgs& a) -> Value {
                           const Value* message = a.get(0, "message");
                           fail(message != nullptr ? python_str(*message) : "raise_exception called");
                       }));
        g.emplace_back("range", Value::make_function([](CallArgs& a) {
                           int64_t start = 0, stop = 0, step = 1;
                           auto num = [](const Value& v) {
                               if (v.kind != Kind::Int) fail("range() arguments must be integers");
                               return v.i;
                           };
                           if (a.positional.size() == 1) {
                               stop = num(a.positional[0]);
                           } else if (a.positional.size() >= 2) {
                               start = num(a.positional[0]);
                               stop = num(a.positional[1]);
                               if (a.positional.size() > 2) step = num(a.positional[2]);
                           }
                           if (step == 0) fail("range() step must not be zero");
                           List out;
                           for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) {
                               if (out.size() >= 100000) fail("range() too large");
                               out.push_back(Value::integer(k));
                           }
                           return Value::make_list(std::move(out));
                       }));
        g.emplace_back("namespace", Value::make_function([](CallArgs& a) {
                           Dict fields;
                           for (const auto& arg : a.positional) {
                               if (arg.kind == Kind::Dict) fields.insert(fields.end(), arg.dict->begin(), arg.dict->end());
                           }
                           for (const auto& kw : a.keyword) fields.push_back(kw);
                           Value ns = Value::make_dict(std::move(fields));
                           ns.is_namespace = true;
                           return ns;
                       }));
        g.emplace_back("dict", Value::make_function([](CallArgs& a) {
                           Dict fields;
                           for (const auto& kw : a.keyword) fields.push_back(kw);
                           return Value::make_dict(std::move(fields));
                       }));
        g.emplace_back("strftime_now", Value::make_function([](CallArgs& a) {
                           const Value* format = a.get(0, "format");
                           std::time_t now = std::time(nullptr);
                           std::tm tm{};
                           localtime_r(&now, &tm);
                           char buf[256] = {};
                           std::strftime(buf, sizeof(buf), format != nullptr ? python_str(*format).c_str() : "%Y-%m-%d", &tm);
                           return Value::string(buf);
                       }));
        return g;
    }();
    return globals;
}

}  // namespace k2::jinja
