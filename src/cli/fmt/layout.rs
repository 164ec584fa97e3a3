//! Terraform's canonical layout, rule for rule, so that `skyform fmt` and `terraform fmt`
//! agree byte for byte (testdata/fmt holds Terraform's own output as the oracle).
//!
//! Two stages, as in Terraform: first a few rewrites of the syntax tree's tokens
//! ([`normalize`]: block labels quoted, `"${x}"` unwrapped to `x`, legacy variable types),
//! then the whitespace pass over lines ([`layout`]): indentation from bracket nesting, one
//! space or none between tokens, and the `=` and trailing comments of consecutive lines aligned
//! in columns. Only spaces before tokens change; every token's text is kept.

use super::lex::{Kind, Token};

/// The canonical form of `text`.
pub fn format(text: &str) -> String {
    let mut toks = super::lex::tokens(text);
    let eof = toks.pop();
    normalize(&mut toks);
    layout(&mut toks);
    toks.extend(eof);
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for t in &toks {
        out.extend(std::iter::repeat_n(' ', t.spaces));
        out.push_str(&t.text);
    }
    out
}

/// A replacement of `toks[start..end]`.
struct Edit {
    start: usize,
    end: usize,
    with: Vec<Token>,
}

/// Terraform's rewrites beyond whitespace.
fn normalize(toks: &mut Vec<Token>) {
    let mut edits = Vec::new();
    let mut blocks = Vec::new();
    body(toks, 0, &mut blocks, &mut edits);
    edits.sort_by_key(|e| std::cmp::Reverse(e.start));
    for e in edits {
        toks.splice(e.start..e.end, e.with);
    }
}

fn skip_trivia(toks: &[Token], mut i: usize) -> usize {
    while i < toks.len() && matches!(toks[i].kind, Kind::Newline | Kind::Comment) {
        i += 1;
    }
    i
}

/// Walks a body from `i` to its closing brace (returned) or the end of the input.
fn body(toks: &[Token], mut i: usize, blocks: &mut Vec<String>, edits: &mut Vec<Edit>) -> usize {
    loop {
        i = skip_trivia(toks, i);
        let Some(t) = toks.get(i) else {
            return i;
        };
        if t.kind == Kind::CBrace {
            return i;
        }
        if t.kind != Kind::Ident {
            i = skip_statement(toks, i);
            continue;
        }
        let name = t.text.clone();
        if toks.get(i + 1).map(|t| t.kind) == Some(Kind::Equal) {
            let (start, end, next) = expression(toks, i + 2);
            let expr = &toks[start..end];
            let with = if blocks.len() == 1 && blocks[0] == "variable" && name == "type" {
                type_expr(expr)
            } else {
                value_expr(expr)
            };
            if let Some(with) = with {
                edits.push(Edit { start, end, with });
            }
            i = next;
            continue;
        }
        // A block: labels, then `{`.
        let mut j = i + 1;
        let mut labels = Vec::new();
        let mut plain = true;
        while let Some(t) = toks.get(j) {
            match t.kind {
                Kind::Ident => {
                    labels.push(vec![
                        Token::new(Kind::OQuote, "\""),
                        Token::new(Kind::QuotedLit, &t.text),
                        Token::new(Kind::CQuote, "\""),
                    ]);
                    plain = false;
                    j += 1;
                }
                Kind::OQuote => {
                    let close = toks[j..]
                        .iter()
                        .position(|t| t.kind == Kind::CQuote || t.ends_line());
                    match close.map(|c| j + c) {
                        Some(c) if toks[c].kind == Kind::CQuote => {
                            labels.push(toks[j..=c].to_vec());
                            j = c + 1;
                        }
                        _ => break,
                    }
                }
                Kind::Comment if !t.ends_line() => {
                    plain = false;
                    j += 1;
                }
                _ => break,
            }
        }
        if toks.get(j).map(|t| t.kind) != Some(Kind::OBrace) {
            i = skip_statement(toks, i);
            continue;
        }
        if !plain {
            edits.push(Edit {
                start: i + 1,
                end: j,
                with: labels.concat(),
            });
        }
        blocks.push(name);
        let close = body(toks, j + 1, blocks, edits);
        blocks.pop();
        i = close + 1;
    }
}

/// Past a statement that is neither attribute nor block (a syntax error the parser reports).
fn skip_statement(toks: &[Token], i: usize) -> usize {
    let (_, _, next) = expression(toks, i);
    next.max(i + 1)
}

/// The expression from `start`: its end (before a trailing comment and the line break, or the
/// `}` of a one-line block) and where the next statement starts.
fn expression(toks: &[Token], start: usize) -> (usize, usize, usize) {
    let mut depth = 0i32;
    let mut j = start;
    while let Some(t) = toks.get(j) {
        if depth == 0 && (t.ends_line() || t.kind == Kind::CBrace) {
            break;
        }
        depth += t.bracket_change();
        j += 1;
    }
    let mut end = j;
    while end > start && toks[end - 1].kind == Kind::Comment {
        end -= 1;
    }
    let next = match toks.get(j) {
        Some(t) if t.ends_line() => j + 1,
        _ => j,
    };
    (start, end, next)
}

/// `"${x}"` is `x`: an attribute whose value is a single interpolation loses the quotes
/// (in parentheses when it spans lines).
fn value_expr(toks: &[Token]) -> Option<Vec<Token>> {
    let n = toks.len();
    if n < 5
        || toks[0].kind != Kind::OQuote
        || toks[1].kind != Kind::Interp
        || toks[n - 2].kind != Kind::SeqEnd
        || toks[n - 1].kind != Kind::CQuote
    {
        return None;
    }
    let inside = &toks[2..n - 2];
    let mut quotes = 0;
    for t in inside {
        match t.kind {
            Kind::OQuote => quotes += 1,
            Kind::CQuote => quotes -= 1,
            _ if quotes > 0 => {}
            Kind::Interp | Kind::SeqEnd | Kind::QuotedLit => return None,
            _ => {}
        }
    }
    let first = inside.iter().position(|t| t.kind != Kind::Newline)?;
    let last = inside.iter().rposition(|t| t.kind != Kind::Newline)?;
    let trimmed = &inside[first..=last];
    let multiline = trimmed.iter().any(|t| t.kind == Kind::Newline);
    let parens = trimmed.first().map(|t| t.kind) == Some(Kind::OParen)
        && trimmed.len() > 1
        && trimmed.last().map(|t| t.kind) == Some(Kind::CParen);
    let mut out = Vec::with_capacity(trimmed.len() + 2);
    if multiline && !parens {
        out.push(Token::new(Kind::OParen, "("));
        out.extend_from_slice(trimmed);
        out.push(Token::new(Kind::CParen, ")"));
    } else {
        out.extend_from_slice(trimmed);
    }
    Some(out)
}

/// A variable's `type`: `list` is `list(any)`, and the quoted types of old
/// (`"string"`, `"list"`, `"map"`) are written as types.
fn type_expr(toks: &[Token]) -> Option<Vec<Token>> {
    let call = |name: &str, arg: &str| {
        vec![
            Token::new(Kind::Ident, name),
            Token::new(Kind::OParen, "("),
            Token::new(Kind::Ident, arg),
            Token::new(Kind::CParen, ")"),
        ]
    };
    match toks {
        [t] if t.kind == Kind::Ident && matches!(t.text.as_str(), "list" | "map" | "set") => {
            Some(call(&t.text, "any"))
        }
        [o, s, c]
            if o.kind == Kind::OQuote && s.kind == Kind::QuotedLit && c.kind == Kind::CQuote =>
        {
            match s.text.as_str() {
                "string" => Some(vec![Token::new(Kind::Ident, "string")]),
                "list" | "map" => Some(call(&s.text, "string")),
                _ => None,
            }
        }
        _ => None,
    }
}

/// One line's cells: `lead` up to the `=`, `assign` from it, and a trailing line comment.
/// Indices into the tokens; the line is `start..end`, line break included.
struct Line {
    start: usize,
    /// Where the assign cell (`=` and the value) starts, when the line has one: an `=` after
    /// the first token whose value closes every bracket it opens on the line.
    assign: Option<usize>,
    /// The trailing line comment (it holds the line break).
    comment: Option<usize>,
    end: usize,
}

impl Line {
    fn lead_end(&self) -> usize {
        self.assign.or(self.comment).unwrap_or(self.end)
    }
    fn assign_end(&self) -> usize {
        self.comment.unwrap_or(self.end)
    }
}

fn columns(toks: &[Token]) -> usize {
    toks.iter().map(|t| t.spaces + t.text.chars().count()).sum()
}

fn lines(toks: &[Token]) -> Vec<Line> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, t) in toks.iter().enumerate() {
        if t.ends_line() {
            out.push((start, i + 1));
            start = i + 1;
        }
    }
    if start < toks.len() {
        out.push((start, toks.len()));
    }
    out.into_iter()
        .map(|(start, end)| {
            let mut line = Line {
                start,
                assign: None,
                comment: None,
                end,
            };
            if end - start > 1 && toks[end - 1].kind == Kind::Comment {
                line.comment = Some(end - 1);
            }
            let lead_end = line.lead_end();
            if let Some(eq) = (start + 1..lead_end).find(|&i| toks[i].kind == Kind::Equal) {
                let net: i32 = toks[eq..lead_end].iter().map(Token::bracket_change).sum();
                if net == 0 {
                    line.assign = Some(eq);
                }
            }
            line
        })
        .collect()
}

fn layout(toks: &mut [Token]) {
    let lines = lines(toks);
    indent(toks, &lines);
    spacing(toks, &lines);
    align(toks, &lines);
}

/// Two spaces per level: a line with more openers than closers opens a level, and closers
/// close the levels opened before (a stack, so unbalanced lines do not drift).
fn indent(toks: &mut [Token], lines: &[Line]) {
    let mut levels: Vec<i32> = Vec::new();
    for line in lines {
        if line.start == line.end {
            continue;
        }
        if toks[line.start].kind == Kind::Newline {
            toks[line.start].spaces = 0;
            continue;
        }
        let mut net = 0;
        for t in &toks[line.start..line.lead_end()] {
            net += t.bracket_change();
            if t.kind == Kind::OHeredoc {
                break;
            }
        }
        if let Some(a) = line.assign {
            net += toks[a..line.assign_end()]
                .iter()
                .map(Token::bracket_change)
                .sum::<i32>();
        }
        if net > 0 {
            toks[line.start].spaces = 2 * levels.len();
            levels.push(net);
            continue;
        }
        let mut closed = -net;
        while closed > 0
            && let Some(top) = levels.last_mut()
        {
            if closed >= *top {
                closed -= *top;
                levels.pop();
            } else {
                *top -= closed;
                closed = 0;
            }
        }
        toks[line.start].spaces = 2 * levels.len();
    }
}

fn spacing(toks: &mut [Token], lines: &[Line]) {
    for line in lines {
        space_cell(toks, line.start, line.lead_end());
        if let Some(a) = line.assign {
            toks[a].spaces = 1;
            space_cell(toks, a, line.assign_end());
        }
    }
}

fn space_cell(toks: &mut [Token], start: usize, end: usize) {
    for i in start..end.saturating_sub(1) {
        let before = (i > start).then(|| toks[i - 1].kind);
        let space = space_after(&toks[i], before, &toks[i + 1]);
        toks[i + 1].spaces = usize::from(space);
    }
}

/// Whether a space separates `subject` and `after` (`before` precedes `subject` in the cell).
fn space_after(subject: &Token, before: Option<Kind>, after: &Token) -> bool {
    use Kind::*;
    let (s, a) = (subject.kind, after.kind);
    let template_text = |k| matches!(k, QuotedLit | StringLit);
    match () {
        _ if a == Newline => false,
        _ if s == Ident && a == OParen => false,
        _ if (s == Ident && a == DoubleColon) || (s == DoubleColon && a == Ident) => false,
        _ if s == Dot || a == Dot => false,
        _ if a == Comma || a == Ellipsis => false,
        _ if s == Comma => true,
        _ if template_text(s)
            || s == OQuote
            || s == OHeredoc
            || template_text(a)
            || a == CQuote
            || a == CHeredoc =>
        {
            false
        }
        _ if s == Ident && subject.text == "in" && before == Some(Ident) => true,
        _ if a == OBrack && (s == Ident || s == Number || subject.bracket_change() < 0) => false,
        _ if s == Bang => false,
        _ if s == Minus => !matches!(
            before,
            None | Some(
                OParen
                    | OBrace
                    | OBrack
                    | Equal
                    | Colon
                    | Comma
                    | Question
                    | Plus
                    | Star
                    | Slash
                    | Percent
                    | Minus
                    | EqualOp
                    | NotEqual
                    | Gt
                    | Ge
                    | Lt
                    | Le
                    | And
                    | Or
                    | Bang
            )
        ),
        _ if s == OBrace || a == CBrace => !(s == OBrace && a == CBrace),
        _ if matches!(s, Interp | Control) && a == OBrace => true,
        _ if s == CBrace && a == SeqEnd => true,
        _ if s == SeqEnd && matches!(a, Interp | Control) => false,
        _ if subject.bracket_change() > 0 => false,
        _ if after.bracket_change() < 0 => false,
        _ => true,
    }
}

/// Consecutive lines with an `=` line it up one space after the longest lead; then trailing
/// comments of consecutive lines line up one space after the longest code.
fn align(toks: &mut [Token], lines: &[Line]) {
    let lead_width = |toks: &[Token], l: &Line| columns(&toks[l.start..l.lead_end()]);
    let mut run: Vec<&Line> = Vec::new();
    let flush_assign = |toks: &mut [Token], run: &mut Vec<&Line>| {
        let max = run.iter().map(|l| lead_width(toks, l)).max().unwrap_or(0);
        for l in run.drain(..) {
            if let Some(a) = l.assign {
                toks[a].spaces = max - lead_width(toks, l) + 1;
            }
        }
    };
    for l in lines {
        if l.assign.is_some() {
            run.push(l);
        } else if !run.is_empty() {
            flush_assign(toks, &mut run);
        }
    }
    flush_assign(toks, &mut run);

    let code_width = |toks: &[Token], l: &Line| columns(&toks[l.start..l.assign_end()]);
    let flush_comment = |toks: &mut [Token], run: &mut Vec<&Line>| {
        let max = run.iter().map(|l| code_width(toks, l)).max().unwrap_or(0);
        for l in run.drain(..) {
            if let Some(c) = l.comment {
                toks[c].spaces = max - code_width(toks, l) + 1;
            }
        }
    };
    for l in lines {
        if l.comment.is_some() {
            run.push(l);
        } else if !run.is_empty() {
            flush_comment(toks, &mut run);
        }
    }
    flush_comment(toks, &mut run);
}
