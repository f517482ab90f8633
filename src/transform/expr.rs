//! The arithmetic of derived points (docs/PROFILES.md, "Expressions"): a small language over the
//! device's other points, parsed once when the configuration is validated (errors carry their
//! byte offset in the expression) and bound to value slots, so evaluating one costs no
//! allocation and no name lookup.
//!
//! Numbers are f64 throughout (integers are exact up to 2^53); comparisons and `&&`, `||`, `!`
//! give 1 or 0, and any value other than 0 is true. Operators bind as in Rust: unary `-` `!`;
//! `*` `/` `%`; `+` `-`; `<<` `>>`; `&`; `|`; comparisons; `&&`; `||`; and the conditional
//! `c ? a : b` (right-associative) binds loosest.

use std::fmt;

/// A parse error: byte offset in the expression text and message.
#[derive(Debug, Clone, PartialEq)]
pub struct ExprError {
    pub at: usize,
    pub message: String,
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at character {})", self.message, self.at + 1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    Abs,
    Min,
    Max,
    Floor,
    Ceil,
    Round,
    Sqrt,
    Sin,
    Cos,
    /// The low 16 bits read as a signed number.
    I16,
    /// The low 32 bits read as a signed number.
    I32,
    /// The low 16 bits as an unsigned number.
    U16,
    /// `bit(x, n)`: bit n of x, 1 or 0.
    Bit,
    /// `seq(step_s, v0, v1, ...)`: v[k] for the k-th step of `step_s` seconds of `t`, cycling
    /// (the simulator's scripted sequences).
    Seq,
}

impl Func {
    fn by_name(name: &str) -> Option<(Func, usize, usize)> {
        // (function, fewest arguments, most arguments)
        Some(match name {
            "abs" => (Func::Abs, 1, 1),
            "min" => (Func::Min, 2, 16),
            "max" => (Func::Max, 2, 16),
            "floor" => (Func::Floor, 1, 1),
            "ceil" => (Func::Ceil, 1, 1),
            "round" => (Func::Round, 1, 1),
            "sqrt" => (Func::Sqrt, 1, 1),
            "sin" => (Func::Sin, 1, 1),
            "cos" => (Func::Cos, 1, 1),
            "i16" => (Func::I16, 1, 1),
            "i32" => (Func::I32, 1, 1),
            "u16" => (Func::U16, 1, 1),
            "bit" => (Func::Bit, 2, 2),
            "seq" => (Func::Seq, 2, 256),
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Mul,
    Div,
    Rem,
    Add,
    Sub,
    Shl,
    Shr,
    BitAnd,
    BitOr,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

/// A parsed expression; names are not yet bound to values.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Num(f64),
    /// A point of the device (`name`, or `name[k]` for element k, 1-based, of an array).
    Var {
        name: String,
        index: Option<u16>,
        at: usize,
    },
    /// `t`: seconds since the simulation started (simulator expressions only).
    Time,
    /// `i`: the element (1-based) of an array point being computed.
    Element,
    Neg(Box<Node>),
    Not(Box<Node>),
    Bin(BinOp, Box<Node>, Box<Node>),
    Cond(Box<Node>, Box<Node>, Box<Node>),
    Call(Func, Vec<Node>),
}

/// Whether reference `name` (`field` or `measurement.field`) names the point `measurement`.`field`.
pub fn names(name: &str, measurement: &str, field: &str) -> bool {
    match name.split_once('.') {
        Some((m, f)) => m == measurement && f == field,
        None => name == field,
    }
}

/// The expression as written plus its tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub text: String,
    pub root: Node,
}

/// A referenced point name: `(name, element, byte offset)`.
pub type Reference<'a> = (&'a str, Option<u16>, usize);

impl Expr {
    pub fn parse(text: &str) -> Result<Expr, ExprError> {
        if text.len() > MAX_LEN {
            return Err(ExprError {
                at: MAX_LEN,
                message: format!("an expression is at most {MAX_LEN} characters long"),
            });
        }
        let mut p = Parser {
            s: text.as_bytes(),
            at: 0,
            depth: 0,
        };
        let root = p.cond()?;
        p.ws();
        if p.at < p.s.len() {
            return Err(p.error(format!(
                "unexpected {:?}",
                text[p.at..].chars().next().unwrap_or(' ')
            )));
        }
        Ok(Expr {
            text: text.to_string(),
            root,
        })
    }

    /// Every point the expression reads, in order of appearance.
    pub fn references(&self) -> Vec<Reference<'_>> {
        fn walk<'a>(n: &'a Node, out: &mut Vec<Reference<'a>>) {
            match n {
                Node::Var { name, index, at } => out.push((name, *index, *at)),
                Node::Num(_) | Node::Time | Node::Element => {}
                Node::Neg(a) | Node::Not(a) => walk(a, out),
                Node::Bin(_, a, b) => {
                    walk(a, out);
                    walk(b, out);
                }
                Node::Cond(a, b, c) => {
                    walk(a, out);
                    walk(b, out);
                    walk(c, out);
                }
                Node::Call(_, args) => args.iter().for_each(|a| walk(a, out)),
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        out
    }

    /// Binds every reference to a value slot; `resolve` gets `(name, element)` where element
    /// is the explicit `[k]` or else `element` (the array element being computed, 1-based).
    pub fn bind(
        &self,
        element: u16,
        resolve: &mut dyn FnMut(&str, u16, bool) -> Option<usize>,
    ) -> Option<Bound> {
        fn go(
            n: &Node,
            element: u16,
            resolve: &mut dyn FnMut(&str, u16, bool) -> Option<usize>,
        ) -> Option<Bound> {
            Some(match n {
                Node::Num(x) => Bound::Num(*x),
                Node::Var { name, index, .. } => match index {
                    Some(k) => Bound::Slot(resolve(name, *k, true)?),
                    None => Bound::Slot(resolve(name, element, false)?),
                },
                Node::Time => Bound::Time,
                Node::Element => Bound::Num(element as f64),
                Node::Neg(a) => Bound::Neg(Box::new(go(a, element, resolve)?)),
                Node::Not(a) => Bound::Not(Box::new(go(a, element, resolve)?)),
                Node::Bin(op, a, b) => Bound::Bin(
                    *op,
                    Box::new(go(a, element, resolve)?),
                    Box::new(go(b, element, resolve)?),
                ),
                Node::Cond(a, b, c) => Bound::Cond(
                    Box::new(go(a, element, resolve)?),
                    Box::new(go(b, element, resolve)?),
                    Box::new(go(c, element, resolve)?),
                ),
                Node::Call(f, args) => Bound::Call(
                    *f,
                    args.iter()
                        .map(|a| go(a, element, resolve))
                        .collect::<Option<Vec<_>>>()?,
                ),
            })
        }
        go(&self.root, element, resolve)
    }
}

/// An expression bound to value slots.
#[derive(Debug, Clone)]
pub enum Bound {
    Num(f64),
    Slot(usize),
    Time,
    Neg(Box<Bound>),
    Not(Box<Bound>),
    Bin(BinOp, Box<Bound>, Box<Bound>),
    Cond(Box<Bound>, Box<Bound>, Box<Bound>),
    Call(Func, Vec<Bound>),
}

fn truth(x: f64) -> bool {
    x != 0.0 && !x.is_nan()
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// Integer view for bitwise operators (saturating; NaN is 0).
fn int(x: f64) -> i64 {
    x as i64
}

impl Bound {
    /// The value, with `slots` holding the inputs and `t` the simulation time; NaN when an
    /// input slot is missing or the arithmetic has no value (0/0).
    pub fn eval(&self, slots: &[f64], t: f64) -> f64 {
        match self {
            Bound::Num(x) => *x,
            Bound::Slot(i) => slots.get(*i).copied().unwrap_or(f64::NAN),
            Bound::Time => t,
            Bound::Neg(a) => -a.eval(slots, t),
            Bound::Not(a) => flag(!truth(a.eval(slots, t))),
            Bound::Cond(c, a, b) => {
                if truth(c.eval(slots, t)) {
                    a.eval(slots, t)
                } else {
                    b.eval(slots, t)
                }
            }
            Bound::Bin(op, a, b) => {
                let x = a.eval(slots, t);
                // Short-circuit, so `ready && x / y` does not need y when not ready.
                match op {
                    BinOp::And if !truth(x) => return 0.0,
                    BinOp::Or if truth(x) => return 1.0,
                    _ => {}
                }
                let y = b.eval(slots, t);
                match op {
                    BinOp::Mul => x * y,
                    BinOp::Div => x / y,
                    BinOp::Rem => x % y,
                    BinOp::Add => x + y,
                    BinOp::Sub => x - y,
                    BinOp::Shl => {
                        int(x).checked_shl(int(y).clamp(0, 63) as u32).unwrap_or(0) as f64
                    }
                    BinOp::Shr => {
                        int(x).checked_shr(int(y).clamp(0, 63) as u32).unwrap_or(0) as f64
                    }
                    BinOp::BitAnd => (int(x) & int(y)) as f64,
                    BinOp::BitOr => (int(x) | int(y)) as f64,
                    BinOp::Eq => flag(x == y),
                    BinOp::Ne => flag(x != y),
                    BinOp::Lt => flag(x < y),
                    BinOp::Le => flag(x <= y),
                    BinOp::Gt => flag(x > y),
                    BinOp::Ge => flag(x >= y),
                    BinOp::And | BinOp::Or => flag(truth(y)),
                }
            }
            Bound::Call(f, args) => {
                let arg = |k: usize| args.get(k).map(|a| a.eval(slots, t)).unwrap_or(f64::NAN);
                match f {
                    Func::Abs => arg(0).abs(),
                    Func::Floor => arg(0).floor(),
                    Func::Ceil => arg(0).ceil(),
                    Func::Round => arg(0).round(),
                    Func::Sqrt => arg(0).sqrt(),
                    Func::Sin => arg(0).sin(),
                    Func::Cos => arg(0).cos(),
                    Func::I16 => int(arg(0)) as u16 as i16 as f64,
                    Func::I32 => int(arg(0)) as u32 as i32 as f64,
                    Func::U16 => int(arg(0)) as u16 as f64,
                    Func::Bit => flag((int(arg(0)) >> int(arg(1)).clamp(0, 63)) & 1 == 1),
                    Func::Min => (0..args.len()).map(arg).fold(f64::INFINITY, f64::min),
                    Func::Max => (0..args.len()).map(arg).fold(f64::NEG_INFINITY, f64::max),
                    Func::Seq => {
                        let step = arg(0);
                        let n = args.len() - 1;
                        if step.is_nan() || step <= 0.0 || n == 0 {
                            return f64::NAN;
                        }
                        let k = (t / step).floor().rem_euclid(n as f64) as usize;
                        arg(1 + k.min(n - 1))
                    }
                }
            }
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
    /// Nesting depth, bounded so a pathological expression cannot overflow the stack.
    depth: usize,
}

/// Longest expression text (keeps the tree shallow enough to evaluate recursively).
const MAX_LEN: usize = 4096;

/// Deepest nesting of parentheses, calls, conditionals and unary operators.
const MAX_DEPTH: usize = 64;

impl Parser<'_> {
    fn error(&self, message: impl Into<String>) -> ExprError {
        ExprError {
            at: self.at,
            message: message.into(),
        }
    }

    fn ws(&mut self) {
        while self.at < self.s.len() && self.s[self.at].is_ascii_whitespace() {
            self.at += 1;
        }
    }

    /// Consumes `tok` when it comes next (and is not the start of a longer operator).
    fn eat(&mut self, tok: &str) -> bool {
        self.ws();
        let t = tok.as_bytes();
        if !self.s[self.at..].starts_with(t) {
            return false;
        }
        let next = self.s.get(self.at + t.len()).copied();
        let longer = match tok {
            "&" => next == Some(b'&'),
            "|" => next == Some(b'|'),
            "<" => matches!(next, Some(b'<') | Some(b'=')),
            ">" => matches!(next, Some(b'>') | Some(b'=')),
            "!" => next == Some(b'='),
            _ => false,
        };
        if longer {
            return false;
        }
        self.at += t.len();
        true
    }

    fn cond(&mut self) -> Result<Node, ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(format!("nested more than {MAX_DEPTH} deep")));
        }
        let r = self.cond_inner();
        self.depth -= 1;
        r
    }

    fn cond_inner(&mut self) -> Result<Node, ExprError> {
        let c = self.binary(0)?;
        if self.eat("?") {
            let a = self.cond()?;
            if !self.eat(":") {
                return Err(self.error("expected `:` of a `c ? a : b` conditional"));
            }
            let b = self.cond()?;
            return Ok(Node::Cond(Box::new(c), Box::new(a), Box::new(b)));
        }
        Ok(c)
    }

    /// Binary operators by precedence level, loosest first.
    fn binary(&mut self, level: usize) -> Result<Node, ExprError> {
        const LEVELS: &[&[(&str, BinOp)]] = &[
            &[("||", BinOp::Or)],
            &[("&&", BinOp::And)],
            &[
                ("==", BinOp::Eq),
                ("!=", BinOp::Ne),
                ("<=", BinOp::Le),
                (">=", BinOp::Ge),
                ("<", BinOp::Lt),
                (">", BinOp::Gt),
            ],
            &[("|", BinOp::BitOr)],
            &[("&", BinOp::BitAnd)],
            &[("<<", BinOp::Shl), (">>", BinOp::Shr)],
            &[("+", BinOp::Add), ("-", BinOp::Sub)],
            &[("*", BinOp::Mul), ("/", BinOp::Div), ("%", BinOp::Rem)],
        ];
        if level == LEVELS.len() {
            return self.unary();
        }
        let mut left = self.binary(level + 1)?;
        'more: loop {
            for (tok, op) in LEVELS[level] {
                if self.eat(tok) {
                    let right = self.binary(level + 1)?;
                    left = Node::Bin(*op, Box::new(left), Box::new(right));
                    // Comparisons do not chain (`a < b < c` is a mistake, not a range test).
                    if level == 2 {
                        break 'more;
                    }
                    continue 'more;
                }
            }
            break;
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Node, ExprError> {
        if self.depth > MAX_DEPTH {
            return Err(self.error(format!("nested more than {MAX_DEPTH} deep")));
        }
        for (tok, neg) in [("-", true), ("!", false)] {
            if self.eat(tok) {
                self.depth += 1;
                let a = self.unary();
                self.depth -= 1;
                let a = Box::new(a?);
                return Ok(if neg { Node::Neg(a) } else { Node::Not(a) });
            }
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Node, ExprError> {
        self.ws();
        let start = self.at;
        let Some(&c) = self.s.get(self.at) else {
            return Err(self.error("the expression ends where a value was expected"));
        };
        if c == b'(' {
            self.at += 1;
            let e = self.cond()?;
            if !self.eat(")") {
                return Err(self.error("expected `)`"));
            }
            return Ok(e);
        }
        if c.is_ascii_digit() || c == b'.' {
            return self.number();
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            // A name, or `measurement.name` where two points share a name.
            loop {
                while self
                    .s
                    .get(self.at)
                    .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
                {
                    self.at += 1;
                }
                let qualified = self.s.get(self.at) == Some(&b'.')
                    && self
                        .s
                        .get(self.at + 1)
                        .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_');
                if !qualified {
                    break;
                }
                self.at += 1;
            }
            let name = String::from_utf8_lossy(&self.s[start..self.at]).into_owned();
            if self.eat("(") {
                let Some((f, least, most)) = Func::by_name(&name) else {
                    return Err(ExprError {
                        at: start,
                        message: format!("unknown function {name:?}: abs, min, max, floor, ceil, round, sqrt, sin, cos, i16, i32, u16, bit, seq"),
                    });
                };
                let mut args = Vec::new();
                if !self.eat(")") {
                    loop {
                        args.push(self.cond()?);
                        if self.eat(")") {
                            break;
                        }
                        if !self.eat(",") {
                            return Err(self.error("expected `,` or `)` in the argument list"));
                        }
                    }
                }
                if args.len() < least || args.len() > most {
                    return Err(ExprError {
                        at: start,
                        message: if least == most {
                            format!("{name}() takes {least} argument(s), not {}", args.len())
                        } else {
                            format!(
                                "{name}() takes {least} to {most} arguments, not {}",
                                args.len()
                            )
                        },
                    });
                }
                return Ok(Node::Call(f, args));
            }
            match name.as_str() {
                "pi" => return Ok(Node::Num(std::f64::consts::PI)),
                "t" => return Ok(Node::Time),
                "i" => return Ok(Node::Element),
                "true" => return Ok(Node::Num(1.0)),
                "false" => return Ok(Node::Num(0.0)),
                _ => {}
            }
            let mut index = None;
            if self.eat("[") {
                self.ws();
                let k_at = self.at;
                let k = match self.number()? {
                    Node::Num(k) if (1.0..=2000.0).contains(&k) && k.fract() == 0.0 => k as u16,
                    _ => return Err(ExprError {
                        at: k_at,
                        message:
                            "an element index is a whole number from 1 (the first element) to 2000"
                                .into(),
                    }),
                };
                if !self.eat("]") {
                    return Err(self.error("expected `]`"));
                }
                index = Some(k);
            }
            return Ok(Node::Var {
                name,
                index,
                at: start,
            });
        }
        Err(self.error(format!(
            "unexpected {:?} where a value was expected",
            c as char
        )))
    }

    fn number(&mut self) -> Result<Node, ExprError> {
        let start = self.at;
        if self.s[self.at..].starts_with(b"0x") || self.s[self.at..].starts_with(b"0X") {
            self.at += 2;
            let digits = self.at;
            while self.s.get(self.at).is_some_and(|b| b.is_ascii_hexdigit()) {
                self.at += 1;
            }
            let text = std::str::from_utf8(&self.s[digits..self.at]).unwrap_or("");
            return i64::from_str_radix(text, 16)
                .map(|v| Node::Num(v as f64))
                .map_err(|_| ExprError {
                    at: start,
                    message: "a hex number needs digits after 0x".into(),
                });
        }
        while self
            .s
            .get(self.at)
            .is_some_and(|b| b.is_ascii_digit() || *b == b'.' || *b == b'_')
        {
            self.at += 1;
        }
        // An exponent: 1e-3, 2.5E6.
        if matches!(self.s.get(self.at), Some(b'e') | Some(b'E')) {
            let save = self.at;
            self.at += 1;
            if matches!(self.s.get(self.at), Some(b'+') | Some(b'-')) {
                self.at += 1;
            }
            if self.s.get(self.at).is_some_and(|b| b.is_ascii_digit()) {
                while self.s.get(self.at).is_some_and(|b| b.is_ascii_digit()) {
                    self.at += 1;
                }
            } else {
                self.at = save;
            }
        }
        let text: String = String::from_utf8_lossy(&self.s[start..self.at]).replace('_', "");
        text.parse::<f64>().map(Node::Num).map_err(|_| ExprError {
            at: start,
            message: format!("{text:?} is not a number"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Parses and evaluates with named inputs.
    fn eval(text: &str, vars: &[(&str, f64)], t: f64) -> f64 {
        let e = Expr::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let b = e
            .bind(1, &mut |name, _, _| {
                vars.iter().position(|(n, _)| *n == name)
            })
            .unwrap_or_else(|| panic!("{text}: unbound name"));
        let slots: Vec<f64> = vars.iter().map(|v| v.1).collect();
        b.eval(&slots, t)
    }

    #[test]
    fn precedence_and_operators() {
        assert_eq!(eval("1 + 2 * 3", &[], 0.0), 7.0);
        assert_eq!(eval("(1 + 2) * 3", &[], 0.0), 9.0);
        assert_eq!(eval("-2 * -3", &[], 0.0), 6.0);
        assert_eq!(eval("7 % 4 - 10 / 4", &[], 0.0), 0.5);
        assert_eq!(eval("0x4F & 0x27", &[], 0.0), 7.0);
        assert_eq!(eval("x & 0x6F == 0x27", &[("x", 0x0237 as f64)], 0.0), 1.0);
        assert_eq!(eval("1 << 4 | 1", &[], 0.0), 17.0);
        assert_eq!(eval("1 < 2 && 3 >= 3 || 0", &[], 0.0), 1.0);
        assert_eq!(eval("!(1 == 1)", &[], 0.0), 0.0);
        assert_eq!(eval("2 != 3", &[], 0.0), 1.0);
        assert_eq!(eval("1e3 + 2.5E-1 + 1_000", &[], 0.0), 2000.25);
    }

    #[test]
    fn conditionals_chain_right() {
        let rule = "a == 1 ? 10 : a == 2 ? 20 : 30";
        assert_eq!(eval(rule, &[("a", 1.0)], 0.0), 10.0);
        assert_eq!(eval(rule, &[("a", 2.0)], 0.0), 20.0);
        assert_eq!(eval(rule, &[("a", 5.0)], 0.0), 30.0);
    }

    #[test]
    fn the_ur_joint_angle() {
        // 6.000 rad into the revolution, revolution counter 65535 (= -1): -0.283185... rad.
        let q = eval(
            "raw / 1000 + 2 * pi * i16(rev)",
            &[("raw", 6000.0), ("rev", 65535.0)],
            0.0,
        );
        assert!((q - (6.0 - 2.0 * std::f64::consts::PI)).abs() < 1e-12);
        let q = eval(
            "raw / 1000 + 2 * pi * i16(rev)",
            &[("raw", 1234.0), ("rev", 0.0)],
            0.0,
        );
        assert_eq!(q, 1.234);
    }

    #[test]
    fn functions() {
        assert_eq!(eval("i16(65535)", &[], 0.0), -1.0);
        assert_eq!(eval("i32(4294967294)", &[], 0.0), -2.0);
        assert_eq!(eval("u16(-1)", &[], 0.0), 65535.0);
        assert_eq!(eval("bit(0x80, 7) + bit(0x80, 6)", &[], 0.0), 1.0);
        assert_eq!(eval("min(3, 1, 2) + max(3, 9)", &[], 0.0), 10.0);
        assert_eq!(
            eval("abs(-2) + floor(2.7) + ceil(0.2) + round(1.5)", &[], 0.0),
            7.0
        );
        assert_eq!(eval("seq(2, 10, 20, 30)", &[], 0.0), 10.0);
        assert_eq!(eval("seq(2, 10, 20, 30)", &[], 3.9), 20.0);
        assert_eq!(eval("seq(2, 10, 20, 30)", &[], 6.0), 10.0);
        assert_eq!(eval("seq(2, 10, 20, 30)", &[], -1.0), 30.0);
    }

    #[test]
    fn references_and_elements() {
        let e = Expr::parse("a[2] + b * i").unwrap();
        assert_eq!(e.references(), vec![("a", Some(2), 0), ("b", None, 7)]);
        let mut seen = Vec::new();
        let b = e
            .bind(3, &mut |name, k, explicit| {
                seen.push((name.to_string(), k, explicit));
                Some(seen.len() - 1)
            })
            .unwrap();
        assert_eq!(
            seen,
            vec![("a".to_string(), 2, true), ("b".to_string(), 3, false)]
        );
        assert_eq!(b.eval(&[1.0, 2.0], 0.0), 7.0);
    }

    #[test]
    fn errors_say_where() {
        let e = Expr::parse("a + * 2").unwrap_err();
        assert_eq!(e.at, 4);
        let e = Expr::parse("foo(1)").unwrap_err();
        assert!(e.message.contains("unknown function \"foo\""), "{e}");
        let e = Expr::parse("(1 + 2").unwrap_err();
        assert!(e.message.contains("`)`"), "{e}");
        let e = Expr::parse("a ? 1").unwrap_err();
        assert!(e.message.contains("`:`"), "{e}");
        let e = Expr::parse("bit(1)").unwrap_err();
        assert!(e.message.contains("takes 2"), "{e}");
        let e = Expr::parse("a[0]").unwrap_err();
        assert_eq!(e.at, 2);
        let e = Expr::parse("1 2").unwrap_err();
        assert_eq!(e.at, 2);
        assert!(Expr::parse("").is_err());
        assert!(Expr::parse("0x").is_err());
        assert!(Expr::parse(&"(".repeat(10_000)).is_err());
        assert!(Expr::parse(&"-".repeat(10_000)).is_err());
    }

    proptest! {
        /// Any text parses or fails with an offset inside it; never a panic. What parses
        /// evaluates without panicking.
        #[test]
        fn never_panics(text in "[-+*/%()<>=!&|?:a-z0-9_.\\[\\], ]{0,40}") {
            match Expr::parse(&text) {
                Ok(e) => {
                    let b = e.bind(1, &mut |_, _, _| Some(0));
                    if let Some(b) = b {
                        let _ = b.eval(&[1.5], 2.0);
                    }
                }
                Err(e) => prop_assert!(e.at <= text.len()),
            }
        }
    }
}
