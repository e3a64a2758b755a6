// Lexing (with jinja2's whitespace control as transformers configures it) and parsing of the Jinja subset.
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "tokenizer/jinja_ast.h"

namespace k2::jinja {
namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// One tag or text run of the template after whitespace control.
struct Segment {
    enum Type { Text, Var, Block } type = Text;
    std::string content;
    int line = 0;
};

struct Token {
    enum Type { Name, String, Int, Float, Op, End } type = End;
    std::string text;
    int line = 0;
};

[[noreturn]] void syntax_error(const std::string& name, int line, const std::string& message) {
    K2_FAIL("{}:{}: template syntax error: {}", name, line, message);
}

int count_lines(const std::string& s, size_t from, size_t to) {
    int n = 0;
    for (size_t k = from; k < to && k < s.size(); ++k) n += s[k] == '\n';
    return n;
}

// Splits the source into text, {{ }} and {% %} segments (comments dropped) applying trim_blocks,
// lstrip_blocks and the -/+ markers exactly as jinja2's lexer does.
std::vector<Segment> segment(const std::string& src, const std::string& name) {
    std::vector<Segment> out;
    size_t pos = 0;
    int line = 1;
    bool line_starting = true;
    while (pos <= src.size()) {
        size_t open = std::string::npos;
        for (size_t k = src.find('{', pos); k != std::string::npos && k + 1 < src.size(); k = src.find('{', k + 1)) {
            char n = src[k + 1];
            if (n == '{' || n == '%' || n == '#') {
                open = k;
                break;
            }
        }
        std::string text = src.substr(pos, open == std::string::npos ? std::string::npos : open - pos);
        if (open == std::string::npos) {
            if (!text.empty()) out.push_back({Segment::Text, text, line});
            break;
        }
        const char kind = src[open + 1];
        size_t inner = open + 2;
        char sign = 0;
        if (inner < src.size() && (src[inner] == '-' || src[inner] == '+')) sign = src[inner++];
        if (sign == '-') {
            size_t keep = text.size();
            while (keep > 0 && is_space(text[keep - 1])) --keep;
            text.resize(keep);
        } else if (sign != '+' && kind != '{') {
            // lstrip_blocks: drop spaces/tabs between the line start and a block or comment tag.
            size_t nl = text.rfind('\n');
            size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
            if ((l_pos > 0 || line_starting) && text.find_first_not_of(" \t", l_pos) == std::string::npos) {
                text.resize(l_pos);
            }
        }
        const int text_line = line;
        line += count_lines(src, pos, open);
        if (!text.empty()) out.push_back({Segment::Text, text, text_line});
        const int tag_line = line;

        // Find the end of the tag, skipping string literals inside {{ }} and {% %}.
        const std::string close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
        size_t end = std::string::npos;
        char quote = 0;
        for (size_t k = inner; k + 1 < src.size(); ++k) {
            char c = src[k];
            if (kind != '#' && quote != 0) {
                if (c == '\\') {
                    ++k;
                } else if (c == quote) {
                    quote = 0;
                }
                continue;
            }
            if (kind != '#' && (c == '\'' || c == '"')) {
                quote = c;
                continue;
            }
            if (src.compare(k, 2, close) == 0) {
                end = k;
                break;
            }
        }
        if (end == std::string::npos) syntax_error(name, tag_line, fmt::format("unclosed `{{{}` tag", kind));
        size_t content_end = end;
        char end_sign = 0;
        if (content_end > inner && (src[content_end - 1] == '-' || src[content_end - 1] == '+')) {
            end_sign = src[content_end - 1];
            if (end_sign == '+' && kind == '{') end_sign = 0;  // `+}}` is not a marker
            if (end_sign != 0) --content_end;
        }
        std::string content = src.substr(inner, content_end - inner);
        size_t after = end + 2;
        if (end_sign == '-') {
            while (after < src.size() && is_space(src[after])) ++after;
        } else if (end_sign != '+' && kind != '{' && after < src.size() && src[after] == '\n') {
            ++after;  // trim_blocks
        }
        line_starting = after > 0 && src[after - 1] == '\n' && after > end + 2;
        line += count_lines(src, open, after);
        if (kind == '{') out.push_back({Segment::Var, content, tag_line});
        if (kind == '%') out.push_back({Segment::Block, content, tag_line});
        pos = after;
        if (pos >= src.size()) break;
    }
    return out;
}

std::vector<Token> tokenize(const std::string& s, int line, const std::string& name) {
    std::vector<Token> out;
    size_t k = 0;
    while (k < s.size()) {
        char c = s[k];
        if (is_space(c)) {
            line += c == '\n';
            ++k;
            continue;
        }
        if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
            size_t e = k;
            while (e < s.size() && (std::isalnum(static_cast<unsigned char>(s[e])) || s[e] == '_')) ++e;
            out.push_back({Token::Name, s.substr(k, e - k), line});
            k = e;
            continue;
        }
        if (std::isdigit(static_cast<unsigned char>(c))) {
            size_t e = k;
            bool is_float = false;
            while (e < s.size() && (std::isdigit(static_cast<unsigned char>(s[e])) || s[e] == '_')) ++e;
            if (e + 1 < s.size() && s[e] == '.' && std::isdigit(static_cast<unsigned char>(s[e + 1]))) {
                is_float = true;
                ++e;
                while (e < s.size() && (std::isdigit(static_cast<unsigned char>(s[e])) || s[e] == '_')) ++e;
            }
            if (e < s.size() && (s[e] == 'e' || s[e] == 'E')) {
                size_t x = e + 1;
                if (x < s.size() && (s[x] == '+' || s[x] == '-')) ++x;
                if (x < s.size() && std::isdigit(static_cast<unsigned char>(s[x]))) {
                    is_float = true;
                    e = x;
                    while (e < s.size() && std::isdigit(static_cast<unsigned char>(s[e]))) ++e;
                }
            }
            std::string digits;
            for (size_t q = k; q < e; ++q) {
                if (s[q] != '_') digits += s[q];
            }
            out.push_back({is_float ? Token::Float : Token::Int, digits, line});
            k = e;
            continue;
        }
        if (c == '\'' || c == '"') {
            std::string value;
            size_t e = k + 1;
            for (; e < s.size() && s[e] != c; ++e) {
                if (s[e] == '\\' && e + 1 < s.size()) {
                    char n = s[++e];
                    switch (n) {
                        case 'n': value += '\n'; break;
                        case 't': value += '\t'; break;
                        case 'r': value += '\r'; break;
                        case '0': value += '\0'; break;
                        case '\\': value += '\\'; break;
                        case '\'': value += '\''; break;
                        case '"': value += '"'; break;
                        case '\n': break;
                        default:
                            value += '\\';
                            value += n;
                    }
                    continue;
                }
                line += s[e] == '\n';
                value += s[e];
            }
            if (e >= s.size()) syntax_error(name, line, "unterminated string literal");
            out.push_back({Token::String, value, line});
            k = e + 1;
            continue;
        }
        static const char* const kTwoChar[] = {"==", "!=", "<=", ">=", "//", "**"};
        bool matched = false;
        for (const char* op : kTwoChar) {
            if (s.compare(k, 2, op) == 0) {
                out.push_back({Token::Op, op, line});
                k += 2;
                matched = true;
                break;
            }
        }
        if (matched) continue;
        if (std::strchr("+-*/%~<>()[]{},.:|=", c) != nullptr) {
            out.push_back({Token::Op, std::string(1, c), line});
            ++k;
            continue;
        }
        syntax_error(name, line, fmt::format("unexpected character `{}`", c));
    }
    out.push_back({Token::End, "", line});
    return out;
}

// Recursive-descent expression parser with jinja2's precedence.
class ExprParser {
public:
    ExprParser(std::vector<Token> tokens, const std::string& name) : m_tokens(std::move(tokens)), m_name(name) {}

    const Token& peek(size_t ahead = 0) const { return m_tokens[std::min(m_pos + ahead, m_tokens.size() - 1)]; }
    bool at_end() const { return peek().type == Token::End; }
    bool is_op(const char* op, size_t ahead = 0) const {
        return peek(ahead).type == Token::Op && peek(ahead).text == op;
    }
    bool is_name(const char* word, size_t ahead = 0) const {
        return peek(ahead).type == Token::Name && peek(ahead).text == word;
    }
    Token next() { return m_tokens[std::min(m_pos++, m_tokens.size() - 1)]; }
    [[noreturn]] void fail(const std::string& message) const { syntax_error(m_name, peek().line, message); }
    void expect_op(const char* op) {
        if (!is_op(op)) fail(fmt::format("expected `{}`, got `{}`", op, peek().text));
        ++m_pos;
    }
    std::string expect_name() {
        if (peek().type != Token::Name) fail(fmt::format("expected a name, got `{}`", peek().text));
        return next().text;
    }
    void expect_end() {
        if (!at_end()) fail(fmt::format("unexpected `{}`", peek().text));
    }

    std::unique_ptr<Expr> make(ExprKind kind, std::string op = {}) {
        auto e = std::make_unique<Expr>();
        e->kind = kind;
        e->name = std::move(op);
        e->line = peek().line;
        return e;
    }

    std::unique_ptr<Expr> parse_expression(bool with_condexpr = true) {
        auto e = parse_or();
        if (!with_condexpr) return e;
        while (is_name("if")) {
            ++m_pos;
            auto cond = make(ExprKind::Conditional);
            cond->children.push_back(parse_or());
            cond->children.push_back(std::move(e));
            if (is_name("else")) {
                ++m_pos;
                cond->children.push_back(parse_expression());
            }
            e = std::move(cond);
        }
        return e;
    }

    std::unique_ptr<Expr> binary(std::string op, std::unique_ptr<Expr> left, std::unique_ptr<Expr> right) {
        auto e = make(ExprKind::Binary, std::move(op));
        e->children.push_back(std::move(left));
        e->children.push_back(std::move(right));
        return e;
    }

    std::unique_ptr<Expr> parse_or() {
        auto e = parse_and();
        while (is_name("or")) {
            ++m_pos;
            e = binary("or", std::move(e), parse_and());
        }
        return e;
    }
    std::unique_ptr<Expr> parse_and() {
        auto e = parse_not();
        while (is_name("and")) {
            ++m_pos;
            e = binary("and", std::move(e), parse_not());
        }
        return e;
    }
    std::unique_ptr<Expr> parse_not() {
        if (is_name("not")) {
            if (++m_depth > kMaxDepth) fail("expression nested too deeply");
            ++m_pos;
            auto e = make(ExprKind::Unary, "not");
            e->children.push_back(parse_not());
            --m_depth;
            return e;
        }
        return parse_compare();
    }
    std::unique_ptr<Expr> parse_compare() {
        auto e = parse_math1();
        for (;;) {
            const Token& t = peek();
            if (t.type == Token::Op &&
                (t.text == "==" || t.text == "!=" || t.text == "<" || t.text == ">" || t.text == "<=" || t.text == ">=")) {
                std::string op = next().text;
                e = binary(op, std::move(e), parse_math1());
            } else if (is_name("in")) {
                ++m_pos;
                e = binary("in", std::move(e), parse_math1());
            } else if (is_name("not") && is_name("in", 1)) {
                m_pos += 2;
                e = binary("not in", std::move(e), parse_math1());
            } else {
                return e;
            }
        }
    }
    std::unique_ptr<Expr> parse_math1() {
        auto e = parse_concat();
        while (is_op("+") || is_op("-")) {
            std::string op = next().text;
            e = binary(op, std::move(e), parse_concat());
        }
        return e;
    }
    std::unique_ptr<Expr> parse_concat() {
        auto e = parse_math2();
        while (is_op("~")) {
            ++m_pos;
            e = binary("~", std::move(e), parse_math2());
        }
        return e;
    }
    std::unique_ptr<Expr> parse_math2() {
        auto e = parse_pow();
        while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
            std::string op = next().text;
            e = binary(op, std::move(e), parse_pow());
        }
        return e;
    }
    std::unique_ptr<Expr> parse_pow() {
        auto e = parse_unary(true);
        while (is_op("**")) {
            ++m_pos;
            e = binary("**", std::move(e), parse_unary(true));
        }
        return e;
    }
    std::unique_ptr<Expr> parse_unary(bool with_filter) {
        // Every nesting level ((, [, {, unary -, not) passes here: bound the recursion.
        if (++m_depth > kMaxDepth) fail("expression nested too deeply");
        struct Leave {
            int& depth;
            ~Leave() { --depth; }
        } leave{m_depth};
        std::unique_ptr<Expr> e;
        if (is_op("-") || is_op("+")) {
            e = make(ExprKind::Unary, next().text);
            e->children.push_back(parse_unary(false));
        } else {
            e = parse_postfix(parse_primary());
        }
        if (with_filter) e = parse_filter_expr(std::move(e));
        return e;
    }

    std::unique_ptr<Expr> parse_primary() {
        const Token t = peek();
        if (t.type == Token::Name) {
            ++m_pos;
            if (t.text == "true" || t.text == "True") return literal(Value::boolean(true));
            if (t.text == "false" || t.text == "False") return literal(Value::boolean(false));
            if (t.text == "none" || t.text == "None") return literal(Value::none());
            auto e = make(ExprKind::Name, t.text);
            return e;
        }
        if (t.type == Token::String) {
            ++m_pos;
            std::string s = t.text;
            while (peek().type == Token::String) s += next().text;  // adjacent literals concatenate
            return literal(Value::string(s));
        }
        if (t.type == Token::Int) {
            ++m_pos;
            try {
                return literal(Value::integer(std::stoll(t.text)));
            } catch (const std::exception&) {
                fail(fmt::format("integer literal {} is out of range", t.text));
            }
        }
        if (t.type == Token::Float) {
            ++m_pos;
            return literal(Value::number(std::strtod(t.text.c_str(), nullptr)));  // 1e999 is inf, as in Python
        }
        if (is_op("(")) {
            ++m_pos;
            if (is_op(")")) {
                ++m_pos;
                return make(ExprKind::ListLit);  // () is an empty tuple
            }
            auto e = parse_expression();
            if (is_op(",")) {
                auto tuple = make(ExprKind::ListLit);
                tuple->children.push_back(std::move(e));
                while (is_op(",")) {
                    ++m_pos;
                    if (is_op(")")) break;
                    tuple->children.push_back(parse_expression());
                }
                e = std::move(tuple);
            }
            expect_op(")");
            return e;
        }
        if (is_op("[")) {
            ++m_pos;
            auto e = make(ExprKind::ListLit);
            while (!is_op("]")) {
                e->children.push_back(parse_expression());
                if (!is_op(",")) break;
                ++m_pos;
            }
            expect_op("]");
            return e;
        }
        if (is_op("{")) {
            ++m_pos;
            auto e = make(ExprKind::DictLit);
            while (!is_op("}")) {
                e->children.push_back(parse_expression());
                expect_op(":");
                e->children.push_back(parse_expression());
                if (!is_op(",")) break;
                ++m_pos;
            }
            expect_op("}");
            return e;
        }
        fail(t.type == Token::End ? "unexpected end of expression" : fmt::format("unexpected `{}`", t.text));
    }

    std::unique_ptr<Expr> literal(Value v) {
        auto e = make(ExprKind::Literal);
        e->value = std::move(v);
        return e;
    }

    std::unique_ptr<Expr> parse_postfix(std::unique_ptr<Expr> e) {
        for (;;) {
            if (is_op(".")) {
                ++m_pos;
                auto a = make(ExprKind::Attr);
                if (peek().type == Token::Int) {
                    a->kind = ExprKind::Subscript;
                    a->children.push_back(std::move(e));
                    const std::string digits = next().text;
                    errno = 0;
                    long long index = std::strtoll(digits.c_str(), nullptr, 10);
                    if (errno == ERANGE) fail(fmt::format("index {} is out of range", digits));
                    a->children.push_back(literal(Value::integer(index)));
                } else {
                    a->name = expect_name();
                    a->children.push_back(std::move(e));
                }
                e = std::move(a);
            } else if (is_op("[")) {
                ++m_pos;
                e = parse_subscript(std::move(e));
            } else if (is_op("(")) {
                auto call = make(ExprKind::Call);
                call->children.push_back(std::move(e));
                parse_args(*call);
                e = std::move(call);
            } else {
                return e;
            }
        }
    }

    std::unique_ptr<Expr> parse_subscript(std::unique_ptr<Expr> target) {
        std::unique_ptr<Expr> parts[3];
        int n = 0;
        bool is_slice = false;
        for (;;) {
            if (is_op(":")) {
                is_slice = true;
                ++m_pos;
                if (++n > 2) fail("too many `:` in a slice");
                continue;
            }
            if (is_op("]")) break;
            if (parts[n]) fail("expected `]`");
            parts[n] = parse_expression();
        }
        expect_op("]");
        if (!is_slice) {
            if (!parts[0]) fail("empty subscript `[]`");
            auto e = make(ExprKind::Subscript);
            e->children.push_back(std::move(target));
            e->children.push_back(std::move(parts[0]));
            return e;
        }
        auto e = make(ExprKind::Slice);
        e->children.push_back(std::move(target));
        for (auto& part : parts) e->children.push_back(part ? std::move(part) : literal(Value::undefined()));
        return e;
    }

    // `(a, b, key=c)`: positional children first, then keyword ones named in kwarg_names.
    void parse_args(Expr& call) {
        expect_op("(");
        while (!is_op(")")) {
            if (peek().type == Token::Name && is_op("=", 1)) {
                call.kwarg_names.push_back(next().text);
                ++m_pos;
                call.children.push_back(parse_expression());
            } else {
                if (!call.kwarg_names.empty()) fail("positional argument after a keyword argument");
                call.children.push_back(parse_expression());
            }
            if (!is_op(",")) break;
            ++m_pos;
        }
        expect_op(")");
    }

    std::unique_ptr<Expr> parse_filter_expr(std::unique_ptr<Expr> e) {
        for (;;) {
            if (is_op("|")) {
                ++m_pos;
                auto f = make(ExprKind::Filter);
                f->name = expect_name();
                while (is_op(".")) {  // dotted filter names are not supported beyond the name
                    ++m_pos;
                    f->name += "." + expect_name();
                }
                f->children.push_back(std::move(e));
                if (is_op("(")) parse_args(*f);
                e = std::move(f);
            } else if (is_name("is")) {
                ++m_pos;
                auto t = make(ExprKind::Test);
                if (is_name("not")) {
                    ++m_pos;
                    t->negated = true;
                }
                t->name = expect_name();
                t->children.push_back(std::move(e));
                if (is_op("(")) {
                    parse_args(*t);
                } else if ((peek().type == Token::Name && !is_name("else") && !is_name("or") && !is_name("and") &&
                            !is_name("if") && !is_name("in") && !is_name("is") && !is_name("not")) ||
                           peek().type == Token::String || peek().type == Token::Int ||
                           peek().type == Token::Float || is_op("[") || is_op("{")) {
                    t->children.push_back(parse_postfix(parse_primary()));
                }
                e = std::move(t);
            } else if (is_op("(")) {
                auto call = make(ExprKind::Call);
                call->children.push_back(std::move(e));
                parse_args(*call);
                e = std::move(call);
            } else {
                return e;
            }
        }
    }

private:
    static constexpr int kMaxDepth = 200;
    std::vector<Token> m_tokens;
    size_t m_pos = 0;
    int m_depth = 0;
    const std::string& m_name;
};

class TemplateParser {
public:
    TemplateParser(std::vector<Segment> segments, const std::string& name)
        : m_segments(std::move(segments)), m_name(name) {}

    std::unique_ptr<Node> parse() {
        auto root = std::make_unique<Node>();
        root->kind = NodeKind::Root;
        root->branches.emplace_back();
        std::string stop = parse_body(root->branches[0], {});
        if (!stop.empty()) syntax_error(m_name, m_line, fmt::format("unexpected `{}`", stop));
        return root;
    }

private:
    // Parses nodes until a block tag whose keyword is in `stops`; returns that keyword ("" at the end).
    // The parser for the stopping tag's content is left in m_stop_parser.
    std::string parse_body(std::vector<std::unique_ptr<Node>>& body, const std::vector<std::string>& stops) {
        while (m_index < m_segments.size()) {
            const Segment& seg = m_segments[m_index++];
            m_line = seg.line;
            if (seg.type == Segment::Text) {
                auto n = std::make_unique<Node>();
                n->kind = NodeKind::Text;
                n->text = seg.content;
                n->line = seg.line;
                body.push_back(std::move(n));
                continue;
            }
            auto p = std::make_unique<ExprParser>(tokenize(seg.content, seg.line, m_name), m_name);
            if (seg.type == Segment::Var) {
                auto n = std::make_unique<Node>();
                n->kind = NodeKind::Output;
                n->line = seg.line;
                n->expr = p->parse_expression();
                p->expect_end();
                body.push_back(std::move(n));
                continue;
            }
            std::string keyword = p->expect_name();
            for (const auto& stop : stops) {
                if (keyword == stop) {
                    m_stop_parser = std::move(p);
                    return keyword;
                }
            }
            body.push_back(parse_statement(keyword, *p, seg.line));
        }
        if (!stops.empty()) syntax_error(m_name, m_line, fmt::format("missing `{}`", stops.back()));
        return "";
    }

    std::unique_ptr<Node> parse_statement(const std::string& keyword, ExprParser& p, int line) {
        if (++m_depth > kMaxBlockDepth) syntax_error(m_name, line, "blocks nested too deeply");
        struct Leave {
            int& depth;
            ~Leave() { --depth; }
        } leave{m_depth};
        auto n = std::make_unique<Node>();
        n->line = line;
        if (keyword == "if") {
            n->kind = NodeKind::If;
            n->conditions.push_back(p.parse_expression());
            p.expect_end();
            for (;;) {
                n->branches.emplace_back();
                std::string stop = parse_body(n->branches.back(), {"elif", "else", "endif"});
                if (stop == "endif") break;
                if (stop == "elif") {
                    n->conditions.push_back(m_stop_parser->parse_expression());
                    m_stop_parser->expect_end();
                    continue;
                }
                m_stop_parser->expect_end();
                n->branches.emplace_back();
                parse_body(n->branches.back(), {"endif"});
                break;
            }
            m_stop_parser->expect_end();
        } else if (keyword == "for") {
            n->kind = NodeKind::For;
            n->targets.push_back(p.expect_name());
            while (p.is_op(",")) {
                p.next();
                n->targets.push_back(p.expect_name());
            }
            if (!p.is_name("in")) p.fail("expected `in` in a for loop");
            p.next();
            n->expr = p.parse_expression(false);
            if (p.is_name("if")) {
                p.next();
                n->filter = p.parse_expression(false);
            }
            p.expect_end();
            n->branches.resize(2);
            std::string stop = parse_body(n->branches[0], {"else", "endfor"});
            if (stop == "else") {
                m_stop_parser->expect_end();
                parse_body(n->branches[1], {"endfor"});
            }
            m_stop_parser->expect_end();
        } else if (keyword == "set") {
            n->targets.push_back(p.expect_name());
            if (p.is_op(".")) {
                p.next();
                n->targets.push_back(p.expect_name());
            }
            if (p.is_op("=")) {
                p.next();
                n->kind = NodeKind::Set;
                n->expr = p.parse_expression();
                p.expect_end();
            } else {
                p.expect_end();
                n->kind = NodeKind::SetBlock;
                n->branches.emplace_back();
                parse_body(n->branches[0], {"endset"});
                m_stop_parser->expect_end();
            }
        } else if (keyword == "break" || keyword == "continue") {
            n->kind = keyword == "break" ? NodeKind::Break : NodeKind::Continue;
            p.expect_end();
        } else if (keyword == "macro") {
            n->kind = NodeKind::Macro;
            n->name = p.expect_name();
            p.expect_op("(");
            while (!p.is_op(")")) {
                n->params.push_back(p.expect_name());
                if (p.is_op("=")) {
                    p.next();
                    n->defaults.push_back(p.parse_expression());
                } else {
                    n->defaults.push_back(nullptr);
                }
                if (!p.is_op(",")) break;
                p.next();
            }
            p.expect_op(")");
            p.expect_end();
            n->branches.emplace_back();
            parse_body(n->branches[0], {"endmacro"});
        } else {
            syntax_error(m_name, line, fmt::format("unknown tag `{}`", keyword));
        }
        return n;
    }

    static constexpr int kMaxBlockDepth = 100;
    std::vector<Segment> m_segments;
    int m_depth = 0;
    size_t m_index = 0;
    int m_line = 1;
    const std::string& m_name;
    std::unique_ptr<ExprParser> m_stop_parser;
};

}  // namespace

std::unique_ptr<Node> parse_template(const std::string& source, const std::string& name) {
    // jinja2 reads the source with splitlines(): \r\n and \r become \n and one trailing newline is dropped
    // (keep_trailing_newline=False).
    std::string src;
    src.reserve(source.size());
    for (size_t k = 0; k < source.size(); ++k) {
        if (source[k] == '\r') {
            src += '\n';
            if (k + 1 < source.size() && source[k + 1] == '\n') ++k;
        } else {
            src += source[k];
        }
    }
    if (!src.empty() && src.back() == '\n') src.pop_back();
    return TemplateParser(segment(src, name), name).parse();
}

}  // namespace k2::jinja
