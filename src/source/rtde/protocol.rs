//! The RTDE wire format (pure, no I/O): UR's Real-Time Data Exchange, protocol version 2
//! (shared/reference/opcua-robotics-and-rtde.md). Every package is `u16 size` (header
//! included) + `u8 type` + payload, big-endian. The client asks for protocol version 2 (`V`),
//! the controller's version (`v`), sets up its output recipe (`O`: frequency + field names;
//! the reply is a recipe id + the fields' types) and starts (`S`); the controller then sends
//! data packages (`U`: recipe id + the fields packed in recipe order) and text messages (`M`).
//!
//! Both sides live here: `linetap simulate` encodes what the source decodes. Nothing here
//! panics on any input (the decoders are proptested over random bytes at every cut).

/// `V`: request protocol version.
pub const REQUEST_PROTOCOL_VERSION: u8 = b'V';
/// `v`: get the controller's version.
pub const GET_URCONTROL_VERSION: u8 = b'v';
/// `M`: a text message.
pub const TEXT_MESSAGE: u8 = b'M';
/// `U`: a data package.
pub const DATA_PACKAGE: u8 = b'U';
/// `O`: set up the outputs.
pub const SETUP_OUTPUTS: u8 = b'O';
/// `I`: set up the inputs.
pub const SETUP_INPUTS: u8 = b'I';
/// `S`: start.
pub const START: u8 = b'S';
/// `P`: pause.
pub const PAUSE: u8 = b'P';

/// The protocol version linetap speaks.
pub const PROTOCOL_VERSION: u16 = 2;
/// The header: u16 size + u8 type.
pub const HEADER: usize = 3;

/// Why bytes could not be read as RTDE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("package header says {0} bytes, fewer than its own 3")]
    BadSize(u16),
    #[error("{what}: {got} bytes where {want} were expected")]
    Length {
        what: &'static str,
        got: usize,
        want: usize,
    },
    #[error("{0}")]
    Malformed(String),
}

/// One RTDE data type (the controller's names in the setup reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldType {
    Bool,
    Uint8,
    Uint32,
    Uint64,
    Int32,
    Double,
    Vector3d,
    Vector6d,
    Vector6Int32,
    Vector6Uint32,
}

impl FieldType {
    pub const ALL: [FieldType; 10] = [
        FieldType::Bool,
        FieldType::Uint8,
        FieldType::Uint32,
        FieldType::Uint64,
        FieldType::Int32,
        FieldType::Double,
        FieldType::Vector3d,
        FieldType::Vector6d,
        FieldType::Vector6Int32,
        FieldType::Vector6Uint32,
    ];

    /// The controller's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            FieldType::Bool => "BOOL",
            FieldType::Uint8 => "UINT8",
            FieldType::Uint32 => "UINT32",
            FieldType::Uint64 => "UINT64",
            FieldType::Int32 => "INT32",
            FieldType::Double => "DOUBLE",
            FieldType::Vector3d => "VECTOR3D",
            FieldType::Vector6d => "VECTOR6D",
            FieldType::Vector6Int32 => "VECTOR6INT32",
            FieldType::Vector6Uint32 => "VECTOR6UINT32",
        }
    }

    pub fn parse(name: &str) -> Option<FieldType> {
        FieldType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// How many values it holds (1, 3 or 6).
    pub fn elements(self) -> u16 {
        match self {
            FieldType::Vector3d => 3,
            FieldType::Vector6d | FieldType::Vector6Int32 | FieldType::Vector6Uint32 => 6,
            _ => 1,
        }
    }

    /// Bytes of one element on the wire.
    pub fn element_size(self) -> usize {
        match self {
            FieldType::Bool | FieldType::Uint8 => 1,
            FieldType::Uint32 | FieldType::Int32 => 4,
            FieldType::Vector6Int32 | FieldType::Vector6Uint32 => 4,
            FieldType::Uint64 | FieldType::Double => 8,
            FieldType::Vector3d | FieldType::Vector6d => 8,
        }
    }

    /// Bytes on the wire.
    pub fn size(self) -> usize {
        self.element_size() * self.elements() as usize
    }

    /// The linetap point type its elements are read as.
    pub fn point_type(self) -> crate::config::PointType {
        use crate::config::PointType as P;
        match self {
            FieldType::Bool => P::Bool,
            FieldType::Uint8 => P::U8,
            FieldType::Uint32 | FieldType::Vector6Uint32 => P::U32,
            FieldType::Uint64 => P::U64,
            FieldType::Int32 | FieldType::Vector6Int32 => P::I32,
            FieldType::Double | FieldType::Vector3d | FieldType::Vector6d => P::F64,
        }
    }
}

/// One element of a data package as read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Raw {
    Bool(bool),
    Uint(u64),
    Int(i64),
    Double(f64),
}

impl Raw {
    pub fn as_f64(self) -> f64 {
        match self {
            Raw::Bool(b) => f64::from(u8::from(b)),
            Raw::Uint(u) => u as f64,
            Raw::Int(i) => i as f64,
            Raw::Double(x) => x,
        }
    }
}

/// Appends one package (header + payload) to `out`. A payload longer than a package can
/// carry (65,532 bytes) is an error.
pub fn frame(kind: u8, payload: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
    let size = u16::try_from(payload.len() + HEADER).map_err(|_| {
        WireError::Malformed(format!(
            "a package of {} bytes does not fit RTDE's 16-bit size",
            payload.len() + HEADER
        ))
    })?;
    out.extend_from_slice(&size.to_be_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    Ok(())
}

/// A package found in a buffer: its type, its payload, and the bytes it takes.
pub type Package<'a> = (u8, &'a [u8], usize);

/// The first complete package in `buf`. `Ok(None)` when `buf` holds only part of it.
pub fn next_package(buf: &[u8]) -> Result<Option<Package<'_>>, WireError> {
    if buf.len() < HEADER {
        return Ok(None);
    }
    let size = u16::from_be_bytes([buf[0], buf[1]]);
    if (size as usize) < HEADER {
        return Err(WireError::BadSize(size));
    }
    let size = size as usize;
    if buf.len() < size {
        return Ok(None);
    }
    Ok(Some((buf[2], &buf[HEADER..size], size)))
}

fn exact<'a>(what: &'static str, p: &'a [u8], want: usize) -> Result<&'a [u8], WireError> {
    if p.len() < want {
        return Err(WireError::Length {
            what,
            got: p.len(),
            want,
        });
    }
    Ok(&p[..want])
}

/// `V` reply (and `S`, `P`): accepted or not.
pub fn decode_accepted(what: &'static str, p: &[u8]) -> Result<bool, WireError> {
    Ok(exact(what, p, 1)?[0] == 1)
}

/// The controller's version (`v` reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ControllerVersion {
    pub major: u32,
    pub minor: u32,
    pub bugfix: u32,
    pub build: u32,
}

impl ControllerVersion {
    /// The highest frequency it streams at: 500 Hz from major 5 (e-Series), else 125 Hz (CB3).
    pub fn max_frequency(&self) -> f64 {
        if self.major >= 5 {
            500.0
        } else {
            125.0
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        [self.major, self.minor, self.bugfix, self.build]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect()
    }
}

impl std::fmt::Display for ControllerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}.{}.{}.{}",
            self.major, self.minor, self.bugfix, self.build
        )
    }
}

pub fn decode_controller_version(p: &[u8]) -> Result<ControllerVersion, WireError> {
    let p = exact("controller version", p, 16)?;
    let word = |i: usize| u32::from_be_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
    Ok(ControllerVersion {
        major: word(0),
        minor: word(4),
        bugfix: word(8),
        build: word(12),
    })
}

/// `O` request: frequency + comma-separated field names.
pub fn encode_setup_outputs(frequency: f64, fields: &[&str]) -> Vec<u8> {
    let mut p = frequency.to_be_bytes().to_vec();
    p.extend_from_slice(fields.join(",").as_bytes());
    p
}

/// The controller's side of `encode_setup_outputs`.
pub fn decode_setup_outputs_request(p: &[u8]) -> Result<(f64, Vec<String>), WireError> {
    let head = exact("output setup", p, 8)?;
    let mut f = [0u8; 8];
    f.copy_from_slice(head);
    let names = std::str::from_utf8(&p[8..])
        .map_err(|_| WireError::Malformed("output setup: field names are not UTF-8".into()))?;
    Ok((
        f64::from_be_bytes(f),
        names
            .split(',')
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect(),
    ))
}

/// The reply to `O`: the recipe id (0: refused) and, per field asked for, its type name as
/// the controller gave it (`NOT_FOUND` for a field it lacks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSetup {
    pub recipe: u8,
    pub types: Vec<String>,
}

pub fn decode_setup_outputs(p: &[u8]) -> Result<OutputSetup, WireError> {
    let recipe = exact("output setup reply", p, 1)?[0];
    let types = std::str::from_utf8(&p[1..])
        .map_err(|_| WireError::Malformed("output setup reply: types are not UTF-8".into()))?;
    Ok(OutputSetup {
        recipe,
        types: types
            .split(',')
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

pub fn encode_setup_outputs_reply(s: &OutputSetup) -> Vec<u8> {
    let mut p = vec![s.recipe];
    p.extend_from_slice(s.types.join(",").as_bytes());
    p
}

/// A text message (`M`, version 2): message, source, level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text {
    pub message: String,
    pub source: String,
    /// 0 exception, 1 error, 2 warning, 3 info.
    pub level: u8,
}

pub fn decode_text(p: &[u8]) -> Result<Text, WireError> {
    let mut at = 0usize;
    let mut string = |what: &'static str| -> Result<String, WireError> {
        let n = *p.get(at).ok_or(WireError::Length {
            what,
            got: p.len(),
            want: at + 1,
        })? as usize;
        let s = p.get(at + 1..at + 1 + n).ok_or(WireError::Length {
            what,
            got: p.len(),
            want: at + 1 + n,
        })?;
        at += 1 + n;
        Ok(String::from_utf8_lossy(s).into_owned())
    };
    let message = string("text message")?;
    let source = string("text message source")?;
    let level = *p.get(at).ok_or(WireError::Length {
        what: "text message level",
        got: p.len(),
        want: at + 1,
    })?;
    Ok(Text {
        message,
        source,
        level,
    })
}

pub fn encode_text(t: &Text) -> Vec<u8> {
    let mut p = Vec::new();
    for s in [&t.message, &t.source] {
        let b = &s.as_bytes()[..s.len().min(255)];
        p.push(b.len() as u8);
        p.extend_from_slice(b);
    }
    p.push(t.level);
    p
}

/// Decodes a data package of `recipe` with fields `types` into `out` (cleared first): each
/// field's elements in turn. Errors when the recipe id differs or the length does not match.
pub fn decode_data(
    p: &[u8],
    recipe: u8,
    types: &[FieldType],
    out: &mut Vec<Raw>,
) -> Result<(), WireError> {
    out.clear();
    let Some((&id, mut rest)) = p.split_first() else {
        return Err(WireError::Length {
            what: "data package",
            got: 0,
            want: 1,
        });
    };
    if id != recipe {
        return Err(WireError::Malformed(format!(
            "data package of recipe {id}, where recipe {recipe} was set up"
        )));
    }
    let want: usize = 1 + types.iter().map(|t| t.size()).sum::<usize>();
    if p.len() != want {
        return Err(WireError::Length {
            what: "data package",
            got: p.len(),
            want,
        });
    }
    for t in types {
        for _ in 0..t.elements() {
            let n = t.element_size();
            let (b, r) = rest.split_at(n);
            rest = r;
            out.push(match t {
                FieldType::Bool => Raw::Bool(b[0] != 0),
                FieldType::Uint8 => Raw::Uint(b[0] as u64),
                FieldType::Uint32 | FieldType::Vector6Uint32 => {
                    Raw::Uint(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as u64)
                }
                FieldType::Int32 | FieldType::Vector6Int32 => {
                    Raw::Int(i32::from_be_bytes([b[0], b[1], b[2], b[3]]) as i64)
                }
                FieldType::Uint64 => Raw::Uint(u64::from_be_bytes(eight(b))),
                FieldType::Double | FieldType::Vector3d | FieldType::Vector6d => {
                    Raw::Double(f64::from_be_bytes(eight(b)))
                }
            });
        }
    }
    Ok(())
}

fn eight(b: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    a
}

/// Appends one element of type `t` holding `x` (the simulator's side of `decode_data`):
/// integers saturate at their type's range, NaN gives 0.
pub fn encode_element(t: FieldType, x: f64, out: &mut Vec<u8>) {
    match t {
        FieldType::Bool => out.push(u8::from(x != 0.0 && !x.is_nan())),
        FieldType::Uint8 => out.push(x as u8),
        FieldType::Uint32 | FieldType::Vector6Uint32 => {
            out.extend_from_slice(&(x as u32).to_be_bytes())
        }
        FieldType::Int32 | FieldType::Vector6Int32 => {
            out.extend_from_slice(&(x as i32).to_be_bytes())
        }
        FieldType::Uint64 => out.extend_from_slice(&(x as u64).to_be_bytes()),
        FieldType::Double | FieldType::Vector3d | FieldType::Vector6d => {
            out.extend_from_slice(&x.to_be_bytes())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn package(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame(kind, payload, &mut out).unwrap();
        out
    }

    /// Requests, byte for byte as UR's RTDE guide lays them out.
    #[test]
    fn requests_as_the_guide_lays_them_out() {
        // V: size 5, type 86, u16 2.
        assert_eq!(
            package(REQUEST_PROTOCOL_VERSION, &2u16.to_be_bytes()),
            [0x00, 0x05, 0x56, 0x00, 0x02]
        );
        // v, S, P: empty payloads.
        assert_eq!(package(GET_URCONTROL_VERSION, &[]), [0x00, 0x03, 0x76]);
        assert_eq!(package(START, &[]), [0x00, 0x03, 0x53]);
        assert_eq!(package(PAUSE, &[]), [0x00, 0x03, 0x50]);
        // O: f64 125.0 = 0x405F400000000000, then "timestamp,actual_q".
        let o = package(
            SETUP_OUTPUTS,
            &encode_setup_outputs(125.0, &["timestamp", "actual_q"]),
        );
        let mut want = vec![0x00, 3 + 8 + 18, 0x4F, 0x40, 0x5F, 0x40, 0, 0, 0, 0, 0];
        want.extend_from_slice(b"timestamp,actual_q");
        assert_eq!(o, want);
        let (f, names) = decode_setup_outputs_request(&o[3..]).unwrap();
        assert_eq!(
            (f, names),
            (125.0, vec!["timestamp".into(), "actual_q".into()])
        );
    }

    /// Replies of every package type, from bytes worked out by hand.
    #[test]
    fn replies_of_every_type() {
        // V reply: accepted.
        let v = [0x00, 0x04, 0x56, 0x01];
        let (kind, p, n) = next_package(&v).unwrap().unwrap();
        assert_eq!((kind, n), (REQUEST_PROTOCOL_VERSION, 4));
        assert!(decode_accepted("version", p).unwrap());
        assert!(!decode_accepted("version", &[0]).unwrap());
        // v reply: 5.11.6.118099 (build 0x0001CD53).
        let v = [
            0x00, 0x13, 0x76, 0, 0, 0, 5, 0, 0, 0, 11, 0, 0, 0, 6, 0x00, 0x01, 0xCD, 0x53,
        ];
        let (kind, p, _) = next_package(&v).unwrap().unwrap();
        assert_eq!(kind, GET_URCONTROL_VERSION);
        let ver = decode_controller_version(p).unwrap();
        assert_eq!(ver.to_string(), "5.11.6.118099");
        assert_eq!(ver.max_frequency(), 500.0);
        assert_eq!(ControllerVersion { major: 3, ..ver }.max_frequency(), 125.0);
        // O reply: recipe 1, DOUBLE,VECTOR6D,NOT_FOUND.
        let mut o = vec![0x00, 0, 0x4F, 0x01];
        o.extend_from_slice(b"DOUBLE,VECTOR6D,NOT_FOUND");
        o[1] = o.len() as u8;
        let (_, p, _) = next_package(&o).unwrap().unwrap();
        let s = decode_setup_outputs(p).unwrap();
        assert_eq!(s.recipe, 1);
        assert_eq!(s.types, ["DOUBLE", "VECTOR6D", "NOT_FOUND"]);
        assert_eq!(encode_setup_outputs_reply(&s), p);
        // M: "Hi" from "PS", level 2 (warning).
        let m = [0x00, 0x0A, 0x4D, 2, b'H', b'i', 2, b'P', b'S', 2];
        let (kind, p, _) = next_package(&m).unwrap().unwrap();
        assert_eq!(kind, TEXT_MESSAGE);
        let t = decode_text(p).unwrap();
        assert_eq!(
            t,
            Text {
                message: "Hi".into(),
                source: "PS".into(),
                level: 2
            }
        );
        assert_eq!(encode_text(&t), p);
        // S reply: refused.
        assert!(!decode_accepted("start", &[0]).unwrap());
    }

    /// A data package with one field of every type, big-endian, worked out by hand.
    #[test]
    fn a_data_package_of_every_type() {
        let mut p = vec![7u8]; // recipe 7
        p.push(1); // BOOL true
        p.push(200); // UINT8
        p.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFE]); // UINT32 4294967294
        p.extend_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 1]); // UINT64 2^63 + 1
        p.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFD]); // INT32 -3
        p.extend_from_slice(&[0x3F, 0xF8, 0, 0, 0, 0, 0, 0]); // DOUBLE 1.5
        for x in [0.5f64, -2.0, 1e-3] {
            p.extend_from_slice(&x.to_be_bytes()); // VECTOR3D
        }
        for i in 0..6 {
            p.extend_from_slice(&(i as f64 * 0.25).to_be_bytes()); // VECTOR6D
        }
        for i in 0..6i32 {
            p.extend_from_slice(&(-i).to_be_bytes()); // VECTOR6INT32
        }
        for i in 0..6u32 {
            p.extend_from_slice(&(i + 4_000_000_000).to_be_bytes()); // VECTOR6UINT32
        }
        let mut out = Vec::new();
        decode_data(&p, 7, &FieldType::ALL, &mut out).unwrap();
        assert_eq!(out.len(), 6 + 3 + 6 * 3);
        assert_eq!(out[0], Raw::Bool(true));
        assert_eq!(out[1], Raw::Uint(200));
        assert_eq!(out[2], Raw::Uint(4_294_967_294));
        assert_eq!(out[3], Raw::Uint((1u64 << 63) + 1));
        assert_eq!(out[4], Raw::Int(-3));
        assert_eq!(out[5], Raw::Double(1.5));
        assert_eq!(
            &out[6..9],
            &[Raw::Double(0.5), Raw::Double(-2.0), Raw::Double(1e-3)]
        );
        assert_eq!(out[9 + 5], Raw::Double(1.25));
        assert_eq!(out[15 + 5], Raw::Int(-5));
        assert_eq!(out[21 + 5], Raw::Uint(4_000_000_005));
        // The simulator's encoder gives the same bytes.
        let mut enc = Vec::new();
        encode_element(FieldType::Bool, 1.0, &mut enc);
        encode_element(FieldType::Uint8, 200.0, &mut enc);
        encode_element(FieldType::Uint32, 4_294_967_294.0, &mut enc);
        assert_eq!(enc, p[1..7]);
        enc.clear();
        encode_element(FieldType::Int32, -3.0, &mut enc);
        encode_element(FieldType::Double, 1.5, &mut enc);
        assert_eq!(enc, p[15..27]);
        // Wrong recipe, one byte short, one byte long: errors, not panics.
        assert!(decode_data(&p, 1, &FieldType::ALL, &mut out).is_err());
        assert!(decode_data(&p[..p.len() - 1], 7, &FieldType::ALL, &mut out).is_err());
        let mut long = p.clone();
        long.push(0);
        assert!(decode_data(&long, 7, &FieldType::ALL, &mut out).is_err());
    }

    #[test]
    fn framing_errors() {
        assert_eq!(next_package(&[0, 2, 0x55]), Err(WireError::BadSize(2)));
        assert_eq!(next_package(&[0, 9, 0x55, 1]), Ok(None));
        assert_eq!(next_package(&[0, 9]), Ok(None));
        let mut out = Vec::new();
        assert!(frame(DATA_PACKAGE, &vec![0u8; 70_000], &mut out).is_err());
    }

    proptest! {
        /// Random bytes, cut anywhere: every decoder returns, none panics.
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), cut in 0usize..200) {
            let b = &bytes[..cut.min(bytes.len())];
            let _ = next_package(b);
            let _ = decode_accepted("x", b);
            let _ = decode_controller_version(b);
            let _ = decode_setup_outputs(b);
            let _ = decode_setup_outputs_request(b);
            let _ = decode_text(b);
            let mut out = Vec::new();
            let recipe = b.first().copied().unwrap_or(0);
            let _ = decode_data(b, recipe, &FieldType::ALL, &mut out);
            let _ = decode_data(b, recipe, &[FieldType::Double, FieldType::Vector6d], &mut out);
            // Walk a stream of packages as the source does.
            let mut at = 0;
            while let Ok(Some((_, _, n))) = next_package(&b[at..]) {
                at += n;
            }
        }

        /// A data package cut at every length: an error unless complete.
        #[test]
        fn a_truncated_data_package_is_an_error(values in proptest::collection::vec(any::<f64>(), 6)) {
            let mut p = vec![1u8];
            for v in &values {
                encode_element(FieldType::Vector6d, *v, &mut p);
            }
            let mut out = Vec::new();
            for cut in 0..p.len() {
                prop_assert!(decode_data(&p[..cut], 1, &[FieldType::Vector6d], &mut out).is_err());
            }
            prop_assert!(decode_data(&p, 1, &[FieldType::Vector6d], &mut out).is_ok());
            for (o, v) in out.iter().zip(&values) {
                prop_assert_eq!(o.as_f64().to_bits(), v.to_bits());
            }
        }
    }
}
