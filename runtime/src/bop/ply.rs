//! PLY mesh reader: `ascii 1.0`, `binary_little_endian 1.0` and `binary_big_endian 1.0`.
//!
//! Reads what BOP object models (and most mesh exporters) put in a PLY file: vertex
//! positions, normals, colours and texture coordinates, polygonal faces (fan-triangulated)
//! with optional per-corner texture coordinates, and the `comment TextureFile` line.
//! Values stay in the file's units (BOP models are millimetres); converting is the caller's
//! business.
//!
//! The reader never panics on any input: every malformed file is an [`Error::Ply`] whose
//! detail says where (header line, or element name, 0-based entry index and property; in
//! ascii bodies also the line) and what was expected against what was found. Elements other
//! than `vertex` and `face`, and properties the mesh does not use, are parsed by their
//! declared types and skipped. Bytes after the last declared element are ignored.

use std::fmt;
use std::path::Path;

use crate::{Error, Result};

/// A triangle mesh as stored in a PLY file, in the file's units.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PlyMesh {
    /// Vertex positions `x, y, z`, in file order. Any PLY scalar type is promoted to `f64`
    /// exactly (ascii values of a `float` property are first rounded to `f32`, as the
    /// declared type says). Always finite.
    pub positions: Vec<[f64; 3]>,
    /// Vertex normals `nx, ny, nz`, when the vertex element has all three.
    pub normals: Option<Vec<[f32; 3]>>,
    /// Vertex colours from `red, green, blue` (or `diffuse_red, diffuse_green,
    /// diffuse_blue`), when all three are present; alpha is ignored. Integer properties are
    /// taken as they are (clamped to `0..=255`); `float`/`double` properties are in `[0, 1]`
    /// and become `round(v * 255)`, clamped.
    pub colors_rgb: Option<Vec<[u8; 3]>>,
    /// Per-vertex texture coordinates `(u, v)` from `texture_u, texture_v`, else `s, t`,
    /// else `u, v` (the first pair the vertex element has in full).
    pub vertex_texcoords: Option<Vec<[f32; 2]>>,
    /// Triangles as vertex indices. Faces with `n >= 3` corners are fan-triangulated into
    /// `(0, i, i + 1)` for `i` in `1..n - 1`, in file order. Every index is a valid vertex.
    pub triangles: Vec<[u32; 3]>,
    /// Per-triangle corner texture coordinates from a face list property `texcoord`
    /// (`2n` values for an `n`-corner face), fanned like [`PlyMesh::triangles`] (one entry
    /// per triangle); present when the face element has that property.
    pub face_texcoords: Option<Vec<[[f32; 2]; 3]>>,
    /// The texture image named by the first header line `comment TextureFile <name>`.
    pub texture_file: Option<String>,
}

/// Reads and parses the PLY file at `path`.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read, [`Error::Ply`] when it is not a valid PLY
/// mesh (see [`parse_ply`]).
pub fn read_ply(path: &Path) -> Result<PlyMesh> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_ply(&bytes, path)
}

/// Parses the bytes of a PLY file; `path` is used only in error messages.
///
/// # Errors
/// [`Error::Ply`] when the header is malformed (no `ply` magic, missing or unknown format,
/// unknown keyword or property type, no `end_header`), when there is no vertex element
/// with scalar `x`, `y`, `z` properties, when an element's declared count cannot fit in
/// the bytes left, when the body is truncated or holds a token that is not a number of
/// the declared type, when a coordinate is not finite, when a face has fewer than 3
/// indices or an index that is not a vertex, or when a face's `texcoord` list does not
/// have two values per index.
pub fn parse_ply(bytes: &[u8], path: &Path) -> Result<PlyMesh> {
    parse(bytes).map_err(|detail| Error::Ply {
        path: path.to_path_buf(),
        detail,
    })
}

/// The property types, as the header spells them (`list` aside).
const TYPE_NAMES: &str = "char, uchar, short, ushort, int, uint, float, double or int8..float64";

/// A PLY scalar type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scalar {
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    F32,
    F64,
}

impl Scalar {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "char" | "int8" => Self::I8,
            "uchar" | "uint8" => Self::U8,
            "short" | "int16" => Self::I16,
            "ushort" | "uint16" => Self::U16,
            "int" | "int32" => Self::I32,
            "uint" | "uint32" => Self::U32,
            "float" | "float32" => Self::F32,
            "double" | "float64" => Self::F64,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::I8 => "char",
            Self::U8 => "uchar",
            Self::I16 => "short",
            Self::U16 => "ushort",
            Self::I32 => "int",
            Self::U32 => "uint",
            Self::F32 => "float",
            Self::F64 => "double",
        }
    }

    fn size(self) -> usize {
        match self {
            Self::I8 | Self::U8 => 1,
            Self::I16 | Self::U16 => 2,
            Self::I32 | Self::U32 | Self::F32 => 4,
            Self::F64 => 8,
        }
    }

    /// The value range of an integer type; `None` for floating-point types.
    fn int_range(self) -> Option<(i64, i64)> {
        match self {
            Self::I8 => Some((i8::MIN.into(), i8::MAX.into())),
            Self::U8 => Some((0, u8::MAX.into())),
            Self::I16 => Some((i16::MIN.into(), i16::MAX.into())),
            Self::U16 => Some((0, u16::MAX.into())),
            Self::I32 => Some((i32::MIN.into(), i32::MAX.into())),
            Self::U32 => Some((0, u32::MAX.into())),
            Self::F32 | Self::F64 => None,
        }
    }

    fn is_integer(self) -> bool {
        self.int_range().is_some()
    }
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Ascii,
    BinaryLe,
    BinaryBe,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Scalar(Scalar),
    List { count: Scalar, item: Scalar },
}

#[derive(Debug)]
struct Property {
    name: String,
    kind: Kind,
}

#[derive(Debug)]
struct Element {
    name: String,
    count: u64,
    props: Vec<Property>,
    /// 1-based header line of the `element` line.
    line: usize,
}

impl Element {
    fn find(&self, name: &str) -> Option<(usize, &Property)> {
        self.props.iter().enumerate().find(|(_, p)| p.name == name)
    }

    /// Index and type of a scalar property, `None` when absent or a list.
    fn scalar(&self, name: &str) -> Option<(usize, Scalar)> {
        match self.find(name) {
            Some((
                i,
                Property {
                    kind: Kind::Scalar(t),
                    ..
                },
            )) => Some((i, *t)),
            _ => None,
        }
    }

    fn prop_names(&self) -> String {
        if self.props.is_empty() {
            return "no properties".to_owned();
        }
        let names: Vec<&str> = self.props.iter().map(|p| p.name.as_str()).collect();
        format!("properties: {}", names.join(", "))
    }
}

#[derive(Debug)]
struct Header {
    format: Format,
    elements: Vec<Element>,
    texture_file: Option<String>,
    /// Byte offset of the body (just after the `end_header` line).
    body_start: usize,
    /// Number of header lines, `end_header` included.
    lines: usize,
}

/// Shows (part of) a header line or body token, quoted and escaped.
fn quote(raw: &[u8]) -> String {
    const MAX: usize = 40;
    let text = String::from_utf8_lossy(raw);
    if text.chars().count() > MAX {
        let short: String = text.chars().take(MAX).collect();
        format!("{short:?}...")
    } else {
        format!("{text:?}")
    }
}

fn parse_header(bytes: &[u8]) -> std::result::Result<Header, String> {
    const FORMATS: &str = "ascii, binary_little_endian or binary_big_endian";
    let mut pos = 0usize;
    let mut line_no = 0usize;
    let mut format = None;
    let mut elements: Vec<Element> = Vec::new();
    let mut texture_file = None;
    loop {
        let rest = bytes.get(pos..).unwrap_or_default();
        if rest.is_empty() {
            return Err(if line_no == 0 {
                "header line 1: expected the magic \"ply\", the file is empty".to_owned()
            } else {
                format!("header has no end_header line (the file ends after header line {line_no})")
            });
        }
        let (raw, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (rest.get(..i).unwrap_or_default(), pos.saturating_add(i + 1)),
            None => (rest, bytes.len()),
        };
        pos = next;
        line_no += 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let at = format!("header line {line_no}");
        if line_no == 1 {
            if raw.trim_ascii_end() != b"ply" {
                return Err(format!(
                    "{at}: expected the magic \"ply\", found {}",
                    quote(raw)
                ));
            }
            continue;
        }
        let text = String::from_utf8_lossy(raw);
        let mut toks = text.split_ascii_whitespace();
        let Some(keyword) = toks.next() else {
            continue; // blank line
        };
        let args: Vec<&str> = toks.collect();
        match keyword {
            "format" => {
                if format.is_some() {
                    return Err(format!("{at}: a second format line"));
                }
                let [fmt, version] = args[..] else {
                    return Err(format!(
                        "{at}: expected \"format <{FORMATS}> 1.0\", found {}",
                        quote(raw)
                    ));
                };
                format = Some(match fmt {
                    "ascii" => Format::Ascii,
                    "binary_little_endian" => Format::BinaryLe,
                    "binary_big_endian" => Format::BinaryBe,
                    _ => {
                        return Err(format!(
                            "{at}: unknown format {fmt:?} (expected {FORMATS})"
                        ))
                    }
                });
                if version != "1.0" {
                    return Err(format!(
                        "{at}: unsupported format version {version:?} (expected 1.0)"
                    ));
                }
            }
            "comment" => {
                let after = text.trim_start().get("comment".len()..).unwrap_or("");
                let after = after.trim_start();
                let key = "TextureFile";
                let is_texture = after
                    .get(..key.len())
                    .is_some_and(|k| k.eq_ignore_ascii_case(key))
                    && after
                        .get(key.len()..)
                        .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_whitespace()));
                if is_texture && texture_file.is_none() {
                    let name = after.get(key.len()..).unwrap_or("").trim();
                    if !name.is_empty() {
                        texture_file = Some(name.to_owned());
                    }
                }
            }
            "obj_info" => {}
            "element" => {
                let [name, count] = args[..] else {
                    return Err(format!(
                        "{at}: expected \"element <name> <count>\", found {}",
                        quote(raw)
                    ));
                };
                let count: u64 = count.parse().map_err(|_| {
                    format!(
                        "{at}: element {name:?} count {count:?} is not a non-negative integer"
                    )
                })?;
                if (name == "vertex" || name == "face") && elements.iter().any(|e| e.name == name)
                {
                    return Err(format!("{at}: a second element {name:?}"));
                }
                elements.push(Element {
                    name: name.to_owned(),
                    count,
                    props: Vec::new(),
                    line: line_no,
                });
            }
            "property" => {
                let Some(element) = elements.last_mut() else {
                    return Err(format!(
                        "{at}: property before any element line (expected \"element <name> <count>\" first)"
                    ));
                };
                let scalar = |name: &str| {
                    Scalar::from_name(name).ok_or_else(|| {
                        format!("{at}: unknown property type {name:?} (expected {TYPE_NAMES})")
                    })
                };
                let (kind, name) = match args[..] {
                    ["list", count, item, name] => {
                        let count = scalar(count)?;
                        if !count.is_integer() {
                            return Err(format!(
                                "{at}: list count type {:?} of property {name:?} is not an integer type (expected char, uchar, short, ushort, int, uint or int8..uint32)",
                                count.name()
                            ));
                        }
                        (Kind::List { count, item: scalar(item)? }, name)
                    }
                    [ty, name] if ty != "list" => (Kind::Scalar(scalar(ty)?), name),
                    _ => {
                        return Err(format!(
                            "{at}: expected \"property <type> <name>\" or \"property list <count type> <item type> <name>\", found {}",
                            quote(raw)
                        ))
                    }
                };
                if element.props.iter().any(|p| p.name == name) {
                    return Err(format!(
                        "{at}: element {:?} declares property {name:?} twice",
                        element.name
                    ));
                }
                element.props.push(Property {
                    name: name.to_owned(),
                    kind,
                });
            }
            "end_header" => {
                let Some(format) = format else {
                    return Err(format!(
                        "{at}: end_header before any format line (expected \"format <{FORMATS}> 1.0\" as line 2)"
                    ));
                };
                return Ok(Header {
                    format,
                    elements,
                    texture_file,
                    body_start: pos,
                    lines: line_no,
                });
            }
            other => {
                return Err(format!(
                    "{at}: unknown keyword {other:?} (expected format, comment, obj_info, element, property or end_header)"
                ))
            }
        }
    }
}

/// Where a value is read: element, 0-based entry index, property, list item.
struct At<'a> {
    element: &'a str,
    index: u64,
    prop: &'a str,
    item: Option<usize>,
}

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}, property {:?}",
            self.element, self.index, self.prop
        )?;
        if let Some(item) = self.item {
            write!(f, " item {item}")?;
        }
        Ok(())
    }
}

/// A cursor over the body.
struct Body<'a> {
    bytes: &'a [u8],
    pos: usize,
    format: Format,
    /// Ascii: 1-based file line of `pos`.
    line: usize,
    header_lines: usize,
}

impl<'a> Body<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    fn line_note(&self, line: usize) -> String {
        format!(
            "line {line}, body line {}",
            line.saturating_sub(self.header_lines)
        )
    }

    fn truncated(&self, at: &At<'_>, what: &str, start: usize) -> String {
        format!(
            "{at}: expected {what} at byte {start}, file ends at byte {}",
            self.bytes.len()
        )
    }

    fn take<const N: usize>(
        &mut self,
        at: &At<'_>,
        ty: Scalar,
    ) -> std::result::Result<[u8; N], String> {
        match self
            .bytes
            .get(self.pos..)
            .and_then(|r| r.first_chunk::<N>())
        {
            Some(chunk) => {
                self.pos += N;
                Ok(*chunk)
            }
            None => Err(self.truncated(at, &format!("{N} bytes of {ty}"), self.pos)),
        }
    }

    /// The next whitespace-separated token and the line it is on.
    fn token(&mut self) -> Option<(&'a [u8], usize)> {
        while let Some(&c) = self.bytes.get(self.pos) {
            if !c.is_ascii_whitespace() {
                break;
            }
            if c == b'\n' {
                self.line += 1;
            }
            self.pos += 1;
        }
        let start = self.pos;
        while self
            .bytes
            .get(self.pos)
            .is_some_and(|c| !c.is_ascii_whitespace())
        {
            self.pos += 1;
        }
        let token = self.bytes.get(start..self.pos)?;
        (!token.is_empty()).then_some((token, self.line))
    }

    /// Reads one scalar of type `ty`; `what` names it in messages ("value", "list count").
    fn scalar(&mut self, ty: Scalar, at: &At<'_>, what: &str) -> std::result::Result<f64, String> {
        let be = self.format == Format::BinaryBe;
        macro_rules! bin {
            ($t:ty, $n:literal) => {{
                let b = self.take::<$n>(at, ty)?;
                if be {
                    <$t>::from_be_bytes(b)
                } else {
                    <$t>::from_le_bytes(b)
                }
            }};
        }
        Ok(match (self.format, ty) {
            (Format::Ascii, _) => return self.ascii_scalar(ty, at, what),
            (_, Scalar::I8) => f64::from(bin!(i8, 1)),
            (_, Scalar::U8) => f64::from(bin!(u8, 1)),
            (_, Scalar::I16) => f64::from(bin!(i16, 2)),
            (_, Scalar::U16) => f64::from(bin!(u16, 2)),
            (_, Scalar::I32) => f64::from(bin!(i32, 4)),
            (_, Scalar::U32) => f64::from(bin!(u32, 4)),
            (_, Scalar::F32) => f64::from(bin!(f32, 4)),
            (_, Scalar::F64) => bin!(f64, 8),
        })
    }

    fn ascii_scalar(
        &mut self,
        ty: Scalar,
        at: &At<'_>,
        what: &str,
    ) -> std::result::Result<f64, String> {
        let Some((token, line)) = self.token() else {
            return Err(format!(
                "{at}: expected a {what} of type {ty}, the file ends at {}",
                self.line_note(self.line)
            ));
        };
        let text = std::str::from_utf8(token).ok();
        let bad = |why: String| format!("{at} ({}): {why}", self.line_note(line));
        match ty.int_range() {
            Some((lo, hi)) => match text.and_then(|t| t.parse::<i64>().ok()) {
                // Every PLY integer fits an f64 exactly.
                Some(v) if (lo..=hi).contains(&v) => Ok(v as f64),
                Some(v) => Err(bad(format!(
                    "{v} is out of range (expected a {what} of type {ty}: {lo}..={hi})"
                ))),
                None if text.and_then(|t| t.parse::<f64>().ok()).is_some() => Err(bad(format!(
                    "{} is not an integer (expected a {what} of type {ty})",
                    quote(token)
                ))),
                None => Err(bad(format!(
                    "{} is not a number (expected a {what} of type {ty})",
                    quote(token)
                ))),
            },
            None => match text.and_then(|t| t.parse::<f64>().ok()) {
                Some(v) if ty == Scalar::F32 => Ok(f64::from(v as f32)),
                Some(v) => Ok(v),
                None => Err(bad(format!(
                    "{} is not a number (expected a {what} of type {ty})",
                    quote(token)
                ))),
            },
        }
    }

    /// Reads a list count and, in binary, checks that its items fit in the file.
    fn list_count(
        &mut self,
        count: Scalar,
        item: Scalar,
        at: &At<'_>,
    ) -> std::result::Result<usize, String> {
        let n = self.scalar(count, at, "list count")?;
        if n < 0.0 {
            return Err(format!("{at}: list count {n} is negative"));
        }
        // Integral and at most u32::MAX: exact.
        let n = n as u64;
        let n = usize::try_from(n).map_err(|_| format!("{at}: list count {n} is too large"))?;
        if self.format != Format::Ascii {
            let need = n.checked_mul(item.size());
            if need.is_none_or(|need| need > self.remaining()) {
                let bytes = need.map_or_else(|| "too many".to_owned(), |b| b.to_string());
                return Err(self.truncated(
                    at,
                    &format!("a list of {n} {item} ({bytes} bytes)"),
                    self.pos,
                ));
            }
        }
        Ok(n)
    }

    /// Reads and discards one property value (scalar or whole list).
    fn skip(&mut self, kind: Kind, at: &At<'_>) -> std::result::Result<(), String> {
        match kind {
            Kind::Scalar(ty) => {
                if self.format == Format::Ascii {
                    self.ascii_scalar(ty, at, "value")?;
                } else {
                    self.skip_bytes(ty.size());
                }
            }
            Kind::List { count, item } => {
                let n = self.list_count(count, item, at)?;
                if self.format == Format::Ascii {
                    for i in 0..n {
                        let at = At {
                            item: Some(i),
                            ..*at
                        };
                        self.ascii_scalar(item, &at, "list item")?;
                    }
                } else {
                    // list_count checked that the bytes are there.
                    self.skip_bytes(n.saturating_mul(item.size()));
                }
            }
        }
        Ok(())
    }

    fn skip_bytes(&mut self, n: usize) {
        self.pos = self.pos.saturating_add(n).min(self.bytes.len());
    }

    /// Rejects an element whose declared entries cannot fit in what is left of the file,
    /// before anything is allocated for it.
    fn check_fits(&self, el: &Element) -> std::result::Result<(), String> {
        let count = u128::from(el.count);
        let remaining = self.remaining() as u128;
        if self.format == Format::Ascii {
            // Each property needs a token (a list at least its count): one byte plus a
            // separator, but the file's last token needs no separator.
            let tokens = count * el.props.len() as u128;
            let need = (2 * tokens).saturating_sub(1);
            if need > remaining {
                return Err(format!(
                    "element {:?} (header line {}) declares {} entries of {} values each, which need at least {need} bytes of ascii, but only {remaining} bytes follow {}",
                    el.name,
                    el.line,
                    el.count,
                    el.props.len(),
                    self.line_note(self.line)
                ));
            }
            return Ok(());
        }
        let mut stride = 0u128;
        let mut fixed = true;
        for p in &el.props {
            stride += match p.kind {
                Kind::Scalar(t) => t.size() as u128,
                Kind::List { count, .. } => {
                    fixed = false;
                    count.size() as u128
                }
            };
        }
        if count * stride <= remaining {
            return Ok(());
        }
        if fixed {
            // Name the exact entry and property where the file ends.
            let entry = remaining / stride;
            let mut offset = remaining % stride;
            let mut byte = self.pos as u128 + entry * stride;
            for p in &el.props {
                let Kind::Scalar(ty) = p.kind else { continue };
                let size = ty.size() as u128;
                if size > offset {
                    return Err(format!(
                        "{} {entry}, property {:?}: expected {size} bytes of {ty} at byte {byte}, file ends at byte {} (element {:?} declares {} entries of {stride} bytes, header line {})",
                        el.name,
                        p.name,
                        self.bytes.len(),
                        el.name,
                        el.count,
                        el.line
                    ));
                }
                offset -= size;
                byte += size;
            }
        }
        Err(format!(
            "element {:?} (header line {}) declares {} entries of at least {stride} bytes each ({} bytes), but only {remaining} bytes follow byte {} (file ends at byte {})",
            el.name,
            el.line,
            el.count,
            count * stride,
            self.pos,
            self.bytes.len()
        ))
    }
}

// Slots of the vertex properties the mesh uses.
const X: usize = 0;
const Y: usize = 1;
const Z: usize = 2;
const NX: usize = 3;
const NY: usize = 4;
const NZ: usize = 5;
const R: usize = 6;
const G: usize = 7;
const B: usize = 8;
const U: usize = 9;
const V: usize = 10;
const SLOTS: usize = 11;

/// Which vertex properties feed which slots.
struct VertexPlan {
    roles: Vec<Option<usize>>,
    normals: bool,
    colors: Option<[Scalar; 3]>,
    texcoords: bool,
}

fn vertex_plan(el: &Element) -> std::result::Result<VertexPlan, String> {
    let mut roles = vec![None; el.props.len()];
    let mut assign = |slot: usize, index: usize| {
        if let Some(r) = roles.get_mut(index) {
            *r = Some(slot);
        }
    };
    for (slot, name) in [(X, "x"), (Y, "y"), (Z, "z")] {
        match el.find(name) {
            Some((i, Property { kind: Kind::Scalar(_), .. })) => assign(slot, i),
            Some(_) => {
                return Err(format!(
                    "header line {}: property {name:?} of element \"vertex\" is a list (expected a scalar coordinate)",
                    el.line
                ))
            }
            None => {
                return Err(format!(
                    "header line {}: element \"vertex\" has no property {name:?} (expected x, y and z; it has {})",
                    el.line,
                    el.prop_names()
                ))
            }
        }
    }
    let triple = |names: [&str; 3]| -> Option<[(usize, Scalar); 3]> {
        Some([
            el.scalar(names[0])?,
            el.scalar(names[1])?,
            el.scalar(names[2])?,
        ])
    };
    let normals = triple(["nx", "ny", "nz"]);
    if let Some(n) = normals {
        for (slot, (i, _)) in [NX, NY, NZ].into_iter().zip(n) {
            assign(slot, i);
        }
    }
    let colors = triple(["red", "green", "blue"])
        .or_else(|| triple(["diffuse_red", "diffuse_green", "diffuse_blue"]));
    if let Some(c) = colors {
        for (slot, (i, _)) in [R, G, B].into_iter().zip(c) {
            assign(slot, i);
        }
    }
    let texcoords = [("texture_u", "texture_v"), ("s", "t"), ("u", "v")]
        .into_iter()
        .find_map(|(u, v)| Some((el.scalar(u)?, el.scalar(v)?)));
    if let Some(((iu, _), (iv, _))) = texcoords {
        assign(U, iu);
        assign(V, iv);
    }
    Ok(VertexPlan {
        roles,
        normals: normals.is_some(),
        colors: colors.map(|c| c.map(|(_, t)| t)),
        texcoords: texcoords.is_some(),
    })
}

/// Which face properties hold the indices and the corner texture coordinates.
struct FacePlan {
    indices: usize,
    index_item: Scalar,
    texcoords: Option<usize>,
}

fn face_plan(el: &Element) -> std::result::Result<FacePlan, String> {
    let found = el
        .find("vertex_indices")
        .or_else(|| el.find("vertex_index"));
    let (indices, index_item) = match found {
        Some((i, Property { kind: Kind::List { item, .. }, name })) => {
            if !item.is_integer() {
                return Err(format!(
                    "header line {}: face list {name:?} has item type {item} (expected an integer type)",
                    el.line
                ));
            }
            (i, *item)
        }
        Some((_, p)) => {
            return Err(format!(
                "header line {}: face property {:?} is a scalar (expected \"property list <count type> <index type> {}\")",
                el.line, p.name, p.name
            ))
        }
        None => {
            return Err(format!(
                "header line {}: element \"face\" has no list property \"vertex_indices\" or \"vertex_index\" (it has {})",
                el.line,
                el.prop_names()
            ))
        }
    };
    let texcoords = match el.find("texcoord") {
        Some((i, Property { kind: Kind::List { .. }, .. })) => Some(i),
        Some(_) => {
            return Err(format!(
                "header line {}: face property \"texcoord\" is a scalar (expected a list of 2n texture coordinates)",
                el.line
            ))
        }
        None => None,
    };
    Ok(FacePlan {
        indices,
        index_item,
        texcoords,
    })
}

/// A colour channel as a byte: integers as they are, floats in `[0, 1]` scaled by 255.
fn color_byte(v: f64, ty: Scalar) -> u8 {
    let v = if ty.is_integer() {
        v
    } else {
        (v * 255.0).round()
    };
    // NaN casts to 0.
    v.clamp(0.0, 255.0) as u8
}

/// Fans the corners of one polygon: `(0, i, i + 1)`.
fn fan<T: Copy>(corners: &[T], out: &mut Vec<[T; 3]>) {
    if let Some((&first, rest)) = corners.split_first() {
        for w in rest.windows(2) {
            if let [b, c] = *w {
                out.push([first, b, c]);
            }
        }
    }
}

fn read_vertices(
    body: &mut Body<'_>,
    el: &Element,
    plan: &VertexPlan,
    mesh: &mut PlyMesh,
) -> std::result::Result<(), String> {
    // check_fits bounded the count by the file size.
    let n = usize::try_from(el.count).unwrap_or(0);
    mesh.positions.reserve_exact(n);
    let mut normals = plan.normals.then(|| Vec::with_capacity(n));
    let mut colors = plan.colors.map(|_| Vec::with_capacity(n));
    let mut uvs = plan.texcoords.then(|| Vec::with_capacity(n));
    let mut slots = [0.0f64; SLOTS];
    for index in 0..el.count {
        for (p, role) in el.props.iter().zip(&plan.roles) {
            let at = At {
                element: &el.name,
                index,
                prop: &p.name,
                item: None,
            };
            match (p.kind, role) {
                (Kind::Scalar(ty), Some(slot)) => {
                    let v = body.scalar(ty, &at, "value")?;
                    if matches!(*slot, X | Y | Z) && !v.is_finite() {
                        return Err(format!(
                            "{at}: coordinate {v} is not finite (expected a finite number)"
                        ));
                    }
                    if let Some(s) = slots.get_mut(*slot) {
                        *s = v;
                    }
                }
                (kind, _) => body.skip(kind, &at)?,
            }
        }
        mesh.positions.push([slots[X], slots[Y], slots[Z]]);
        if let Some(normals) = &mut normals {
            normals.push([slots[NX] as f32, slots[NY] as f32, slots[NZ] as f32]);
        }
        if let (Some(colors), Some([tr, tg, tb])) = (&mut colors, plan.colors) {
            colors.push([
                color_byte(slots[R], tr),
                color_byte(slots[G], tg),
                color_byte(slots[B], tb),
            ]);
        }
        if let Some(uvs) = &mut uvs {
            uvs.push([slots[U] as f32, slots[V] as f32]);
        }
    }
    mesh.normals = normals;
    mesh.colors_rgb = colors;
    mesh.vertex_texcoords = uvs;
    Ok(())
}

fn read_faces(
    body: &mut Body<'_>,
    el: &Element,
    plan: &FacePlan,
    vertex_count: u64,
    mesh: &mut PlyMesh,
) -> std::result::Result<(), String> {
    // check_fits bounded the count by the file size; most faces are triangles.
    mesh.triangles
        .reserve(usize::try_from(el.count).unwrap_or(0));
    let mut face_uvs: Option<Vec<[[f32; 2]; 3]>> = plan.texcoords.map(|_| Vec::new());
    let mut indices: Vec<u32> = Vec::new();
    let mut uv_values: Vec<f32> = Vec::new();
    let mut uv_pairs: Vec<[f32; 2]> = Vec::new();
    for index in 0..el.count {
        for (k, p) in el.props.iter().enumerate() {
            let at = At {
                element: &el.name,
                index,
                prop: &p.name,
                item: None,
            };
            match p.kind {
                Kind::List { count, item } if k == plan.indices => {
                    let n = body.list_count(count, item, &at)?;
                    if n < 3 {
                        return Err(format!("{at}: {n} vertex indices (expected at least 3)"));
                    }
                    indices.clear();
                    for i in 0..n {
                        let at = At {
                            item: Some(i),
                            ..at
                        };
                        let v = body.scalar(plan.index_item, &at, "vertex index")?;
                        if v < 0.0 || v >= vertex_count as f64 {
                            return Err(format!(
                                "{at}: vertex index {v} is out of range (element \"vertex\" has {vertex_count} entries)"
                            ));
                        }
                        // A non-negative integer below the vertex count, at most u32::MAX.
                        indices.push(v as u32);
                    }
                }
                Kind::List { count, item } if Some(k) == plan.texcoords => {
                    let n = body.list_count(count, item, &at)?;
                    uv_values.clear();
                    for i in 0..n {
                        let at = At {
                            item: Some(i),
                            ..at
                        };
                        uv_values.push(body.scalar(item, &at, "texture coordinate")? as f32);
                    }
                }
                kind => body.skip(kind, &at)?,
            }
        }
        fan(&indices, &mut mesh.triangles);
        if let Some(face_uvs) = &mut face_uvs {
            if uv_values.len() != 2 * indices.len() {
                return Err(format!(
                    "{} {index}, property \"texcoord\": {} values for {} vertex indices (expected {})",
                    el.name,
                    uv_values.len(),
                    indices.len(),
                    2 * indices.len()
                ));
            }
            uv_pairs.clear();
            uv_pairs.extend(uv_values.chunks_exact(2).map(|c| match *c {
                [u, v] => [u, v],
                _ => [0.0, 0.0],
            }));
            fan(&uv_pairs, face_uvs);
        }
    }
    mesh.face_texcoords = face_uvs;
    Ok(())
}

fn parse(bytes: &[u8]) -> std::result::Result<PlyMesh, String> {
    let header = parse_header(bytes)?;
    let Some(vertex) = header.elements.iter().find(|e| e.name == "vertex") else {
        return Err(format!(
            "header (lines 1..={}): no element \"vertex\" (expected \"element vertex <count>\" with properties x, y, z)",
            header.lines
        ));
    };
    let vertex_plan = vertex_plan(vertex)?;
    let vertex_count = vertex.count;
    let face_plan = match header.elements.iter().find(|e| e.name == "face") {
        Some(face) => Some(face_plan(face)?),
        None => None,
    };
    let mut mesh = PlyMesh {
        texture_file: header.texture_file.clone(),
        ..PlyMesh::default()
    };
    let mut body = Body {
        bytes,
        pos: header.body_start,
        format: header.format,
        line: header.lines + 1,
        header_lines: header.lines,
    };
    for el in &header.elements {
        if el.props.is_empty() {
            continue; // Nothing to read, whatever the count.
        }
        body.check_fits(el)?;
        match (el.name.as_str(), &face_plan) {
            ("vertex", _) => read_vertices(&mut body, el, &vertex_plan, &mut mesh)?,
            ("face", Some(plan)) => read_faces(&mut body, el, plan, vertex_count, &mut mesh)?,
            _ => {
                for index in 0..el.count {
                    for p in &el.props {
                        let at = At {
                            element: &el.name,
                            index,
                            prop: &p.name,
                            item: None,
                        };
                        body.skip(p.kind, &at)?;
                    }
                }
            }
        }
    }
    Ok(mesh)
}
