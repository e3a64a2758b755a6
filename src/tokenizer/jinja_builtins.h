// Internal: Python/Jinja operators, attribute access, filters, tests and globals of the Jinja subset.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/jinja_value.h"

namespace k2::jinja {

// Thrown by builtins; the renderer adds the template name and line.
class BuiltinError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

std::vector<std::string> split_code_points(const std::string& s);
Value get_attr(const Value& obj, const std::string& name);  // obj.name: dict item or bound method
Value get_item(const Value& obj, const Value& key);         // obj[key]
Value slice(const Value& obj, const Value& start, const Value& stop, const Value& step);
Value unary_op(const std::string& op, const Value& v);
Value binary_op(const std::string& op, const Value& a, const Value& b);
Value apply_filter(const std::string& name, const Value& v, CallArgs& args);
bool apply_test(const std::string& name, const Value& v, CallArgs& args);
const std::vector<std::pair<std::string, Value>>& global_functions();  // range, namespace, raise_exception...

}  // namespace k2::jinja
