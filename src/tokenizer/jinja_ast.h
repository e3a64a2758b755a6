// Internal: the syntax tree of the Jinja subset (parsed by jinja_parse.cpp, run by jinja.cpp).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "tokenizer/jinja_value.h"

namespace k2::jinja {

enum class ExprKind {
    Literal,     // value
    Name,        // name
    Attr,        // children[0].name
    Subscript,   // children[0][children[1]]
    Slice,       // children[0][children[1]:children[2]:children[3]] (Undefined literal = omitted)
    Call,        // children[0](children[1..], kwarg_names for the trailing ones)
    Filter,      // children[0] | name(children[1..])
    Test,        // children[0] is [not] name(children[1..]); negated
    Unary,       // op children[0]: "not", "-", "+"
    Binary,      // children[0] op children[1]
    Conditional, // children[1] if children[0] else children[2] (optional)
    ListLit,     // [children...]
    DictLit,     // {children[2k]: children[2k+1]}
};

struct Expr {
    ExprKind kind = ExprKind::Literal;
    Value value;                    // Literal
    std::string name;               // Name / Attr / Filter / Test name; Unary / Binary operator
    std::vector<std::unique_ptr<Expr>> children;
    std::vector<std::string> kwarg_names;  // Call / Filter / Test: names of the last kwarg_names.size() args
    bool negated = false;           // Test
    int line = 0;
};

enum class NodeKind { Root, Text, Output, If, For, Set, SetBlock, Break, Continue, Macro, CallMacro };

struct Node {
    NodeKind kind = NodeKind::Root;
    int line = 0;
    std::string text;                                  // Text
    std::unique_ptr<Expr> expr;                        // Output, Set value, For iterable
    std::vector<std::unique_ptr<Expr>> conditions;     // If: one per branch (else branch has none)
    std::vector<std::vector<std::unique_ptr<Node>>> branches;  // If branches; For: [body, else]; others [body]
    std::vector<std::string> targets;                  // For loop variables; Set: name or [ns, attr]
    std::unique_ptr<Expr> filter;                      // For ... if filter
    std::vector<std::string> params;                   // Macro parameters
    std::vector<std::unique_ptr<Expr>> defaults;       // Macro defaults (nullptr: required)
    std::string name;                                  // Macro name
};

// Parses a template source into a Root node (throws k2::Error "NAME:LINE: message").
std::unique_ptr<Node> parse_template(const std::string& source, const std::string& name);

}  // namespace k2::jinja
