// Values of the Jinja subset, with Python's semantics: truthiness, equality, str() and repr(), and
// tojson as json.dumps(ensure_ascii=False). Dicts keep insertion order, as Python dicts (and JSON
// parsed by Python) do.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace k2::jinja {

struct Value;
using List = std::vector<Value>;
using Dict = std::vector<std::pair<std::string, Value>>;
struct CallArgs;
using Function = std::function<Value(CallArgs&)>;

enum class Kind { Undefined, None, Bool, Int, Float, String, List, Dict, Function };

struct Value {
    Kind kind = Kind::Undefined;
    bool b = false;
    int64_t i = 0;
    double f = 0.0;
    std::string s;                      // String; the name of an Undefined (for error messages)
    std::shared_ptr<List> list;         // List
    std::shared_ptr<Dict> dict;         // Dict (a namespace() is a Dict that `set ns.x` may mutate)
    std::shared_ptr<Function> function;  // Function (builtins, bound methods, macros)
    bool is_namespace = false;

    static Value undefined(std::string name = {});
    static Value none();
    static Value boolean(bool v);
    static Value integer(int64_t v);
    static Value number(double v);
    static Value string(std::string v);
    static Value make_list(List v = {});
    static Value make_dict(Dict v = {});
    static Value make_function(Function fn);
    static Value from_json(const nlohmann::ordered_json& json);

    bool is_undefined() const { return kind == Kind::Undefined; }
    bool is_none() const { return kind == Kind::None; }
    bool is_string() const { return kind == Kind::String; }
    bool is_number() const { return kind == Kind::Int || kind == Kind::Float || kind == Kind::Bool; }
    bool truthy() const;
    double as_double() const;
    const Value* find(const std::string& key) const;  // dict lookup; nullptr when absent
};

struct CallArgs {
    List positional;
    std::vector<std::pair<std::string, Value>> keyword;
    const Value* get(size_t index, const char* name) const;  // positional `index` or keyword `name`
};

bool equals(const Value& a, const Value& b);
std::string python_str(const Value& v);   // str(v): what {{ v }} prints
std::string python_repr(const Value& v);  // repr(v): elements of a printed list/dict
std::string float_repr(double v);         // Python's repr(float)
void append_float_repr(double v, std::string& out);
void append_int(int64_t v, std::string& out);
// json.dumps(v, ensure_ascii=False, indent=indent) with ", " / ": " separators (indent < 0: none).
std::string to_json(const Value& v, int indent = -1, bool sort_keys = false);
std::string type_name(const Value& v);    // Python type name for error messages

}  // namespace k2::jinja
