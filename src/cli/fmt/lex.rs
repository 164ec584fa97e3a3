//! Tokens of HCL's native syntax, split the way Terraform's formatter splits them: `fmt`
//! changes only the spaces between these tokens, so the split decides what it can touch.
//! Comments keep their line break (`# …\n` is one token); a heredoc's opening `<<EOT\n` is one
//! token, each body line is a literal, and the closing marker's whole line (its indentation
//! too) is one token — which is why heredoc bodies come out byte for byte.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    OBrace,
    CBrace,
    OBrack,
    CBrack,
    OParen,
    CParen,
    OQuote,
    CQuote,
    OHeredoc,
    CHeredoc,
    Star,
    Slash,
    Plus,
    Minus,
    Percent,
    Equal,
    EqualOp,
    NotEqual,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
    Bang,
    Dot,
    Comma,
    DoubleColon,
    Ellipsis,
    FatArrow,
    Question,
    Colon,
    /// `${` or `${~`.
    Interp,
    /// `%{` or `%{~`.
    Control,
    /// The `}` or `~}` that closes an interpolation or directive.
    SeqEnd,
    /// Literal text inside a quoted string.
    QuotedLit,
    /// Literal text inside a heredoc (a line, with its line break, or the part before `${`).
    StringLit,
    Number,
    Ident,
    Comment,
    Newline,
    Invalid,
    /// The end of the input: holds the spaces after the last line break, which Terraform
    /// keeps (they belong to no line, so its layout never touches them).
    Eof,
}

#[derive(Debug, Clone)]
pub struct Token {
    pub kind: Kind,
    pub text: String,
    /// Spaces written before the token.
    pub spaces: usize,
}

impl Token {
    pub fn new(kind: Kind, text: &str) -> Token {
        Token {
            kind,
            text: text.to_string(),
            spaces: 0,
        }
    }

    /// A line comment ends its line (it holds the line break).
    pub fn ends_line(&self) -> bool {
        self.kind == Kind::Newline || (self.kind == Kind::Comment && self.text.ends_with('\n'))
    }

    /// +1 for an opening bracket (or `${`, `%{`), -1 for a closing one.
    pub fn bracket_change(&self) -> i32 {
        match self.kind {
            Kind::OBrace | Kind::OBrack | Kind::OParen | Kind::Interp | Kind::Control => 1,
            Kind::CBrace | Kind::CBrack | Kind::CParen | Kind::SeqEnd => -1,
            _ => 0,
        }
    }
}

enum Mode {
    Main,
    Quoted,
    Heredoc { marker: String, line_start: bool },
}

fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_alphabetic()
}

fn is_ident_continue(c: char) -> bool {
    c == '_' || c == '-' || c.is_alphanumeric()
}

/// The tokens of `src` (a leading byte-order mark is dropped).
pub fn tokens(src: &str) -> Vec<Token> {
    let src = src.strip_prefix('\u{feff}').unwrap_or(src);
    let mut lx = Lexer {
        s: src,
        p: 0,
        out: Vec::new(),
        modes: vec![Mode::Main],
        braces: 0,
        returns: Vec::new(),
    };
    lx.run();
    lx.out
}

struct Lexer<'a> {
    s: &'a str,
    p: usize,
    out: Vec<Token>,
    modes: Vec<Mode>,
    braces: i64,
    /// Brace depths at which a `}` closes an interpolation and returns to the template.
    returns: Vec<i64>,
}

impl Lexer<'_> {
    fn rest(&self) -> &str {
        &self.s[self.p..]
    }

    fn emit(&mut self, kind: Kind, len: usize, spaces: usize) {
        let text = self.s[self.p..self.p + len].to_string();
        self.out.push(Token { kind, text, spaces });
        self.p += len;
    }

    fn run(&mut self) {
        let mut spaces = 0;
        while self.p < self.s.len() {
            match self.modes.last() {
                Some(Mode::Main) | None => {
                    let c = self.rest().as_bytes()[0];
                    if c == b' ' || c == b'\t' {
                        self.p += 1;
                        spaces += 1;
                        continue;
                    }
                    self.main_token(spaces);
                    spaces = 0;
                }
                Some(Mode::Quoted) => self.quoted_token(),
                Some(Mode::Heredoc { .. }) => self.heredoc_token(),
            }
        }
        self.out.push(Token {
            kind: Kind::Eof,
            text: String::new(),
            spaces,
        });
    }

    /// `${`, `${~`, `%{` or `%{~` at the start of the rest: enters an expression.
    fn template_open(&mut self) -> bool {
        let r = self.rest();
        let kind = if r.starts_with("${") {
            Kind::Interp
        } else if r.starts_with("%{") {
            Kind::Control
        } else {
            return false;
        };
        let len = if r[2..].starts_with('~') { 3 } else { 2 };
        self.emit(kind, len, 0);
        self.braces += 1;
        self.returns.push(self.braces);
        if let Some(Mode::Heredoc { line_start, .. }) = self.modes.last_mut() {
            *line_start = false;
        }
        self.modes.push(Mode::Main);
        true
    }

    /// The length of template literal text from the start of the rest: up to a line break,
    /// an unescaped `${`/`%{`, or (quoted) a closing `"`. `$${` and `%%{` are literal.
    fn literal_len(&self, quoted: bool) -> usize {
        let b = self.rest().as_bytes();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'\n' | b'\r' => break,
                b'"' if quoted => break,
                b'\\' if quoted => {
                    i += 1;
                    if i < b.len() && b[i] != b'\n' && b[i] != b'\r' {
                        i += 1;
                    }
                    continue;
                }
                c @ (b'$' | b'%') => {
                    if b.get(i + 1) == Some(&b'{') {
                        break;
                    }
                    if b.get(i + 1) == Some(&c) && b.get(i + 2) == Some(&b'{') {
                        i += 3;
                        continue;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        // Keep whole characters.
        while !self.rest().is_char_boundary(i) {
            i += 1;
        }
        i
    }

    fn quoted_token(&mut self) {
        if self.template_open() {
            return;
        }
        let r = self.rest();
        if r.starts_with('"') {
            self.emit(Kind::CQuote, 1, 0);
            self.modes.pop();
            return;
        }
        let n = self.literal_len(true);
        if n > 0 {
            self.emit(Kind::QuotedLit, n, 0);
        } else {
            // A line break inside quotes: not valid HCL; kept as it is.
            let n = if r.starts_with("\r\n") { 2 } else { 1 };
            self.emit(Kind::Invalid, n, 0);
        }
    }

    fn heredoc_token(&mut self) {
        if self.template_open() {
            return;
        }
        let Some(Mode::Heredoc { marker, line_start }) = self.modes.last() else {
            return;
        };
        let n = self.literal_len(false);
        let r = self.rest();
        let eol = if r[n..].starts_with("\r\n") {
            2
        } else if r[n..].starts_with('\n') {
            1
        } else {
            0
        };
        if eol > 0 && *line_start && r[..n].trim() == marker.as_str() {
            let cr = usize::from(r[..n].ends_with('\r'));
            self.emit(Kind::CHeredoc, n - cr, 0);
            self.emit(Kind::Newline, eol + cr, 0);
            self.modes.pop();
            return;
        }
        if eol == 0 && n == 0 {
            // A lone `\r` or the end of the input: nothing more can be matched.
            let len = self.rest().chars().next().map_or(1, char::len_utf8);
            self.emit(Kind::StringLit, len, 0);
            return;
        }
        self.emit(Kind::StringLit, n + eol, 0);
        if let Some(Mode::Heredoc { line_start, .. }) = self.modes.last_mut() {
            *line_start = eol > 0;
        }
    }

    fn main_token(&mut self, spaces: usize) {
        let r = self.rest();
        let b = r.as_bytes();
        let c = r.chars().next().unwrap_or(' ');
        let two = |s: &str| r.starts_with(s);
        if c.is_ascii_digit() {
            let n = number_len(b);
            return self.emit(Kind::Number, n, spaces);
        }
        if is_ident_start(c) {
            let n = r
                .char_indices()
                .find(|&(_, ch)| !is_ident_continue(ch))
                .map_or(r.len(), |(i, _)| i);
            return self.emit(Kind::Ident, n, spaces);
        }
        if c == '#' || two("//") {
            let n = line_len(r);
            return self.emit(Kind::Comment, n, spaces);
        }
        if two("/*") {
            let n = r[2..].find("*/").map_or(r.len(), |i| i + 4);
            return self.emit(Kind::Comment, n, spaces);
        }
        if two("\r\n") {
            return self.emit(Kind::Newline, 2, spaces);
        }
        if c == '\n' {
            return self.emit(Kind::Newline, 1, spaces);
        }
        if two("<<")
            && let Some((n, marker)) = heredoc_opener(r)
        {
            self.emit(Kind::OHeredoc, n, spaces);
            self.modes.push(Mode::Heredoc {
                marker,
                line_start: true,
            });
            return;
        }
        for (s, kind) in [
            ("...", Kind::Ellipsis),
            ("==", Kind::EqualOp),
            ("!=", Kind::NotEqual),
            (">=", Kind::Ge),
            ("<=", Kind::Le),
            ("&&", Kind::And),
            ("||", Kind::Or),
            ("::", Kind::DoubleColon),
            ("=>", Kind::FatArrow),
        ] {
            if two(s) {
                return self.emit(kind, s.len(), spaces);
            }
        }
        if two("~}") {
            // Always the end of a template sequence (a stray one is the parser's problem).
            self.emit(Kind::SeqEnd, 2, spaces);
            self.close_sequence();
            return;
        }
        let kind = match c {
            '{' => {
                self.braces += 1;
                Kind::OBrace
            }
            '}' => {
                if self.returns.last() == Some(&self.braces) {
                    self.emit(Kind::SeqEnd, 1, spaces);
                    self.close_sequence();
                    return;
                }
                self.braces -= 1;
                Kind::CBrace
            }
            '"' => {
                self.emit(Kind::OQuote, 1, spaces);
                self.modes.push(Mode::Quoted);
                return;
            }
            '[' => Kind::OBrack,
            ']' => Kind::CBrack,
            '(' => Kind::OParen,
            ')' => Kind::CParen,
            '.' => Kind::Dot,
            ',' => Kind::Comma,
            '*' => Kind::Star,
            '/' => Kind::Slash,
            '%' => Kind::Percent,
            '+' => Kind::Plus,
            '-' => Kind::Minus,
            '=' => Kind::Equal,
            '<' => Kind::Lt,
            '>' => Kind::Gt,
            '!' => Kind::Bang,
            '?' => Kind::Question,
            ':' => Kind::Colon,
            _ => Kind::Invalid,
        };
        self.emit(kind, c.len_utf8(), spaces);
    }

    /// After a `}`/`~}` that may close a template sequence: back to the template if it does.
    fn close_sequence(&mut self) {
        if self.returns.last() == Some(&self.braces) {
            self.returns.pop();
            self.braces -= 1;
            if self.modes.len() > 1 {
                self.modes.pop();
            }
        } else {
            self.braces -= 1;
        }
    }
}

/// `#…` or `//…` up to and including the line break.
fn line_len(r: &str) -> usize {
    r.find('\n').map_or(r.len(), |i| i + 1)
}

/// A number: a digit, then digits, dots and exponents, not ending in a dot (`1.foo` is `1`).
fn number_len(b: &[u8]) -> usize {
    let mut i = 1;
    let mut end = 1;
    loop {
        match b.get(i) {
            Some(d) if d.is_ascii_digit() => {
                i += 1;
                end = i;
            }
            Some(b'.') => i += 1,
            Some(b'e' | b'E') => {
                let sign = usize::from(matches!(b.get(i + 1), Some(b'+' | b'-')));
                if b.get(i + 1 + sign).is_some_and(u8::is_ascii_digit) {
                    i += 2 + sign;
                    end = i;
                } else {
                    break;
                }
            }
            _ => break,
        }
    }
    end
}

/// `<<EOT\n` or `<<-EOT\n` (or `\r\n`): its length and the marker.
fn heredoc_opener(r: &str) -> Option<(usize, String)> {
    let body = r.strip_prefix("<<")?;
    let (dash, body) = match body.strip_prefix('-') {
        Some(b) => (1, b),
        None => (0, body),
    };
    let first = body.chars().next()?;
    if !is_ident_start(first) {
        return None;
    }
    let n = body
        .char_indices()
        .find(|&(_, ch)| !is_ident_continue(ch))
        .map_or(body.len(), |(i, _)| i);
    let eol = if body[n..].starts_with("\r\n") {
        2
    } else if body[n..].starts_with('\n') {
        1
    } else {
        return None;
    };
    Some((2 + dash + n + eol, body[..n].to_string()))
}
