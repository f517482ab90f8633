//! How an OPC UA point says where its value is (pure): a NodeId in the standard text form
//! (`ns=2;s=Spindle.Speed`, `nsu=http://example.com/cnc/;i=1001`, `i=2258`, `g=…`, `b=…`),
//! or a browse path from the Objects folder's parent (`Objects/DeviceSet/{URI}Name/…`), each
//! element a browse name, optionally with its namespace URI in braces. Node ids are local to a
//! server: a namespace given by URI is resolved against the server's namespace array when the
//! session starts.

/// An endpoint `opc.tcp://HOST:PORT[/PATH]` as (HOST without IPv6 brackets, PORT, /PATH);
/// `None` when it is not one.
pub fn split_endpoint(endpoint: &str) -> Option<(String, u16, String)> {
    let rest = endpoint.strip_prefix("opc.tcp://")?;
    let (hp, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = hp.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port.parse().ok()?, path.to_string()))
}

/// The namespace of a NodeId or browse name: an index, or a URI resolved at run time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Namespace {
    Index(u16),
    Uri(String),
}

/// The identifier part of a NodeId.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identifier {
    Numeric(u32),
    String(String),
    /// The GUID as written (`g=`), checked for shape.
    Guid(String),
    /// An opaque identifier (`b=`), base64 as written.
    Opaque(String),
}

/// A NodeId as configured.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeRef {
    pub namespace: Namespace,
    pub identifier: Identifier,
}

/// One element of a browse path: a browse name, in a namespace or in any.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathElement {
    /// `None`: any namespace (the first child with that name).
    pub namespace: Option<String>,
    pub name: String,
}

/// Parses a NodeId text; the error says what is wrong and how it should look.
pub fn parse_node(text: &str) -> Result<NodeRef, String> {
    const HOW: &str = "a NodeId is ns=INDEX;TYPE=VALUE or nsu=URI;TYPE=VALUE with TYPE i (number), s (string), g (GUID) or b (base64), e.g. \"ns=2;s=Spindle.Speed\"";
    let t = text.trim();
    let (namespace, rest) = if let Some(r) = t.strip_prefix("nsu=") {
        let (uri, rest) = r
            .split_once(';')
            .ok_or_else(|| format!("{t:?}: no ';' after the namespace URI: {HOW}"))?;
        if uri.is_empty() {
            return Err(format!("{t:?}: empty namespace URI: {HOW}"));
        }
        (Namespace::Uri(uri.to_string()), rest)
    } else if let Some(r) = t.strip_prefix("ns=") {
        let (index, rest) = r
            .split_once(';')
            .ok_or_else(|| format!("{t:?}: no ';' after the namespace index: {HOW}"))?;
        let index: u16 = index
            .parse()
            .map_err(|_| format!("{t:?}: namespace index {index:?} is not 0 … 65535: {HOW}"))?;
        (Namespace::Index(index), rest)
    } else {
        (Namespace::Index(0), t)
    };
    let (kind, value) = rest
        .split_once('=')
        .ok_or_else(|| format!("{t:?}: no identifier: {HOW}"))?;
    let identifier = match kind {
        "i" => Identifier::Numeric(
            value
                .parse()
                .map_err(|_| format!("{t:?}: i={value} is not a number 0 … 4294967295"))?,
        ),
        "s" if !value.is_empty() => Identifier::String(value.to_string()),
        "g" if is_guid(value) => Identifier::Guid(value.to_ascii_lowercase()),
        "g" => {
            return Err(format!(
                "{t:?}: g={value} is not a GUID (8-4-4-4-12 hex digits)"
            ))
        }
        "b" if !value.is_empty()
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c)) =>
        {
            Identifier::Opaque(value.to_string())
        }
        _ => return Err(format!("{t:?}: {HOW}")),
    };
    Ok(NodeRef {
        namespace,
        identifier,
    })
}

fn is_guid(g: &str) -> bool {
    let parts: Vec<&str> = g.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Parses a browse path: `/`-separated browse names from the root, each optionally
/// `{URI}Name`; `\/` and `\{` escape. The first element names a child of the root folder
/// (`Objects`, `Types`, `Views`).
pub fn parse_path(text: &str) -> Result<Vec<PathElement>, String> {
    const HOW: &str = "a path is browse names separated by '/', from Objects, each optionally with its namespace URI in braces, e.g. \"Objects/DeviceSet/{http://example.com/cnc/}Spindle/Speed\"";
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = text.trim().chars().peekable();
    let mut elements: Vec<String> = Vec::new();
    // Inside `{URI}` a '/' is the URI's (http://example.com/cnc/), not a separator.
    let mut in_uri = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n) => {
                    cur.push('\\');
                    cur.push(n);
                }
                None => return Err(format!("{text:?}: ends with '\\': {HOW}")),
            },
            '{' if cur.is_empty() => {
                in_uri = true;
                cur.push(c);
            }
            '}' if in_uri => {
                in_uri = false;
                cur.push(c);
            }
            '/' if !in_uri => elements.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    elements.push(cur);
    for e in elements {
        let (namespace, name) = if let Some(r) = e.strip_prefix('{') {
            let (uri, name) = r
                .split_once('}')
                .ok_or_else(|| format!("{text:?}: '{{' without '}}': {HOW}"))?;
            if uri.is_empty() {
                return Err(format!("{text:?}: empty namespace URI in {{}}: {HOW}"));
            }
            (Some(uri.to_string()), name.to_string())
        } else {
            (None, e)
        };
        let name = name
            .replace("\\/", "/")
            .replace("\\{", "{")
            .replace("\\\\", "\\");
        if name.is_empty() {
            return Err(format!("{text:?}: an empty browse name: {HOW}"));
        }
        out.push(PathElement { namespace, name });
    }
    if out.first().is_none_or(|e| {
        e.namespace.is_none() && !["Objects", "Types", "Views"].contains(&e.name.as_str())
    }) {
        return Err(format!(
            "{text:?}: a path starts at Objects (or Types, Views): {HOW}"
        ));
    }
    Ok(out)
}

impl std::fmt::Display for NodeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Namespace::Index(0) => {}
            Namespace::Index(i) => write!(f, "ns={i};")?,
            Namespace::Uri(u) => write!(f, "nsu={u};")?,
        }
        match &self.identifier {
            Identifier::Numeric(n) => write!(f, "i={n}"),
            Identifier::String(s) => write!(f, "s={s}"),
            Identifier::Guid(g) => write!(f, "g={g}"),
            Identifier::Opaque(b) => write!(f, "b={b}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids() {
        assert_eq!(
            parse_node("ns=2;s=Spindle.Speed").unwrap(),
            NodeRef {
                namespace: Namespace::Index(2),
                identifier: Identifier::String("Spindle.Speed".into())
            }
        );
        assert_eq!(
            parse_node("nsu=http://example.com/cnc/;i=1001").unwrap(),
            NodeRef {
                namespace: Namespace::Uri("http://example.com/cnc/".into()),
                identifier: Identifier::Numeric(1001)
            }
        );
        assert_eq!(parse_node("i=2258").unwrap().namespace, Namespace::Index(0));
        assert_eq!(
            parse_node("ns=1;s=a;b=c").unwrap().identifier,
            Identifier::String("a;b=c".into())
        );
        assert!(parse_node("ns=1;g=72962B91-FA75-4AE6-8D28-B404DC7DAF63").is_ok());
        for bad in [
            "ns=2:s=Foo",
            "ns=x;s=Foo",
            "ns=70000;i=1",
            "s=",
            "i=abc",
            "nsu=;i=1",
            "ns=1;g=123",
            "q=1",
            "Spindle.Speed",
            "",
        ] {
            assert!(parse_node(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_node("nsu=urn:x;s=A").unwrap().to_string(),
            "nsu=urn:x;s=A"
        );
    }

    #[test]
    fn paths() {
        let p = parse_path("Objects/DeviceSet/{http://example.com/cnc/}Spindle/Speed").unwrap();
        assert_eq!(p.len(), 4);
        assert_eq!(p[2].namespace.as_deref(), Some("http://example.com/cnc/"));
        assert_eq!(p[2].name, "Spindle");
        assert_eq!(p[3].namespace, None);
        let p = parse_path("Objects/A\\/B").unwrap();
        assert_eq!(p[1].name, "A/B");
        let p = parse_path("Objects/{http://opcfoundation.org/UA/DI/}DeviceSet/{urn:x}Y").unwrap();
        assert_eq!(
            p[1].namespace.as_deref(),
            Some("http://opcfoundation.org/UA/DI/")
        );
        assert_eq!(p[1].name, "DeviceSet");
        assert_eq!(p.len(), 3);
        for bad in [
            "DeviceSet/X",
            "Objects//X",
            "Objects/{urn:x",
            "Objects/{}X",
            "Objects/X/",
            "",
        ] {
            assert!(parse_path(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC{0,40}") {
            let _ = parse_node(&s);
            let _ = parse_path(&s);
        }
    }
}
