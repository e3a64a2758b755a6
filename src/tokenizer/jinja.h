// An embedded Jinja2 subset for chat templates, configured as transformers' apply_chat_template configures
// jinja2 (trim_blocks, lstrip_blocks, loopcontrols, tojson = json.dumps(ensure_ascii=False), raise_exception,
// no trailing newline kept). Values follow Python semantics (truthiness, `or` returning an operand, str()
// of None/True/lists), so renders match jinja2 byte for byte.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

namespace k2::jinja {

struct Node;

class Template {
public:
    // Parses `source`; syntax errors throw k2::Error "NAME:LINE: message".
    Template(const std::string& source, std::string name);
    ~Template();
    Template(Template&&) noexcept;
    Template& operator=(Template&&) noexcept;

    // Renders with the top-level keys of `context` as variables. Runtime errors (raise_exception,
    // undefined values, type errors) throw k2::Error "NAME:LINE: message".
    std::string render(const nlohmann::ordered_json& context) const;

    const std::string& name() const { return m_name; }

private:
    std::string m_name;
    std::shared_ptr<const Node> m_root;
};

}  // namespace k2::jinja
