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
    let text = String::from_utf8_lossy(raw.get(..4 * MAX).unwrap_or(raw));
    if raw.len() > 4 * MAX || text.chars().count() > MAX {
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

    /// Where the cursor is, for messages about a value just read: the line in ascii.
    fn place(&self) -> String {
        if self.format == Format::Ascii {
            format!(" ({})", self.line_note(self.line))
        } else {
            String::new()
        }
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

    /// Skips spaces, tabs and carriage returns, stopping at a line feed.
    fn skip_blanks(&mut self) {
        while self
            .bytes
            .get(self.pos)
            .is_some_and(|&c| c != b'\n' && c.is_ascii_whitespace())
        {
            self.pos += 1;
        }
    }

    /// Ascii: moves to the first token of the next entry, over blank lines.
    fn begin_entry(&mut self) {
        if self.format != Format::Ascii {
            return;
        }
        while let Some(&c) = self.bytes.get(self.pos) {
            if !c.is_ascii_whitespace() {
                break;
            }
            if c == b'\n' {
                self.line += 1;
            }
            self.pos += 1;
        }
    }

    /// Ascii: checks that an entry ends its line (each entry is one line).
    fn end_entry(&mut self, el: &Element, index: u64) -> std::result::Result<(), String> {
        if self.format != Format::Ascii {
            return Ok(());
        }
        self.skip_blanks();
        match self.bytes.get(self.pos) {
            None => Ok(()),
            Some(b'\n') => {
                self.pos += 1;
                self.line += 1;
                Ok(())
            }
            Some(_) => {
                let line = self.line;
                let extra = self
                    .token()
                    .map_or_else(|_| String::new(), |(t, _)| quote(t));
                let last = el.props.last().map_or("", |p| p.name.as_str());
                Err(format!(
                    "{} {index} ({}): extra value {extra} after the last property {last:?} (expected the line to end: one {} per line)",
                    el.name,
                    self.line_note(line),
                    el.name
                ))
            }
        }
    }

    /// The next token on the current line, and the line; `Err(true)` at the end of the
    /// file, `Err(false)` at the end of the line.
    fn token(&mut self) -> std::result::Result<(&'a [u8], usize), bool> {
        self.skip_blanks();
        let start = self.pos;
        while self
            .bytes
            .get(self.pos)
            .is_some_and(|c| !c.is_ascii_whitespace())
        {
            self.pos += 1;
        }
        match self.bytes.get(start..self.pos) {
            Some(token) if !token.is_empty() => Ok((token, self.line)),
            _ => Err(start >= self.bytes.len()),
        }
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
        let (token, line) = match self.token() {
            Ok(found) => found,
            Err(true) => {
                return Err(format!(
                    "{at}: expected a {what} of type {ty}, the file ends at {}",
                    self.line_note(self.line)
                ))
            }
            Err(false) => {
                return Err(format!(
                    "{at} ({}): the line ends early (expected a {what} of type {ty})",
                    self.line_note(self.line)
                ))
            }
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
            return Err(format!("{at}{}: list count {n} is negative", self.place()));
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
                } else if ty.size() <= self.remaining() {
                    self.skip_bytes(ty.size());
                } else {
                    let what = format!("{} bytes of {ty}", ty.size());
                    return Err(self.truncated(at, &what, self.pos));
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

    /// Checks an element's declared count against what is left of the file before
    /// anything is allocated for it. Returns how many entries can fit at most (the
    /// capacity to reserve) and, when the declared count cannot fit, a note saying so.
    /// An element that cannot fit still gets read up to where the file runs out, so that
    /// the error names the exact entry and property; the note is added to that error.
    fn fit(&self, el: &Element) -> (usize, Option<String>) {
        let count = u128::from(el.count);
        let remaining = self.remaining() as u128;
        let props = el.props.len() as u128;
        let (min_entry, need, unit) = if self.format == Format::Ascii {
            // Each property needs a token (a list at least its count): one byte plus a
            // separator, but the file's last token needs no separator.
            let need = (2 * count * props).saturating_sub(1);
            (2 * props, need, format!("{props} values"))
        } else {
            let stride: u128 = el
                .props
                .iter()
                .map(|p| match p.kind {
                    Kind::Scalar(t) => t.size() as u128,
                    Kind::List { count, .. } => count.size() as u128,
                })
                .sum();
            (stride, count * stride, format!("at least {stride} bytes"))
        };
        let capacity = count.min((remaining + 1) / min_entry.max(1));
        let capacity = usize::try_from(capacity).unwrap_or(0);
        if need <= remaining {
            return (capacity, None);
        }
        let after = if self.format == Format::Ascii {
            self.line_note(self.line)
        } else {
            format!("byte {}", self.pos)
        };
        let note = format!(
            "header line {} declares {} {:?} entries of {unit} each, which need at least {need} bytes, but only {remaining} bytes follow {after}",
            el.line, el.count, el.name
        );
        (capacity, Some(note))
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
    capacity: usize,
    mesh: &mut PlyMesh,
) -> std::result::Result<(), String> {
    let n = capacity;
    mesh.positions.reserve_exact(n);
    let mut normals = plan.normals.then(|| Vec::with_capacity(n));
    let mut colors = plan.colors.map(|_| Vec::with_capacity(n));
    let mut uvs = plan.texcoords.then(|| Vec::with_capacity(n));
    let mut slots = [0.0f64; SLOTS];
    for index in 0..el.count {
        body.begin_entry();
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
                            "{at}{}: coordinate {v} is not finite (expected a finite number)",
                            body.place()
                        ));
                    }
                    if let Some(s) = slots.get_mut(*slot) {
                        *s = v;
                    }
                }
                (kind, _) => body.skip(kind, &at)?,
            }
        }
        body.end_entry(el, index)?;
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
    capacity: usize,
    mesh: &mut PlyMesh,
) -> std::result::Result<(), String> {
    // Most faces are triangles.
    mesh.triangles.reserve(capacity);
    let mut face_uvs: Option<Vec<[[f32; 2]; 3]>> = plan.texcoords.map(|_| Vec::new());
    let mut indices: Vec<u32> = Vec::new();
    let mut uv_values: Vec<f32> = Vec::new();
    let mut uv_pairs: Vec<[f32; 2]> = Vec::new();
    for index in 0..el.count {
        body.begin_entry();
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
                        return Err(format!(
                            "{at}{}: {n} vertex indices (expected at least 3)",
                            body.place()
                        ));
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
                                "{at}{}: vertex index {v} is out of range (element \"vertex\" has {vertex_count} entries)",
                                body.place()
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
                    "{} {index}, property \"texcoord\"{}: {} values for {} vertex indices (expected {})",
                    el.name,
                    body.place(),
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
        body.end_entry(el, index)?;
    }
    mesh.face_texcoords = face_uvs;
    Ok(())
}

/// Reads and discards every entry of an element the mesh does not use.
fn skip_element(body: &mut Body<'_>, el: &Element) -> std::result::Result<(), String> {
    for index in 0..el.count {
        body.begin_entry();
        for p in &el.props {
            let at = At {
                element: &el.name,
                index,
                prop: &p.name,
                item: None,
            };
            body.skip(p.kind, &at)?;
        }
        body.end_entry(el, index)?;
    }
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
        let (capacity, shortfall) = body.fit(el);
        let read = match (el.name.as_str(), &face_plan) {
            ("vertex", _) => read_vertices(&mut body, el, &vertex_plan, capacity, &mut mesh),
            ("face", Some(plan)) => {
                read_faces(&mut body, el, plan, vertex_count, capacity, &mut mesh)
            }
            _ => skip_element(&mut body, el),
        };
        match (read, shortfall) {
            (Ok(()), None) => {}
            (Err(e), None) => return Err(e),
            (Err(e), Some(note)) => return Err(format!("{e} ({note})")),
            // Cannot happen: the shortfall is a true lower bound on the bytes needed.
            (Ok(()), Some(note)) => return Err(note),
        }
    }
    Ok(mesh)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::{Path, PathBuf};

    use proptest::prelude::*;

    use super::*;

    const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/bop/testdata/ply/");
    const REAL_MODEL: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/ycbv-mini/models/obj_000001.ply"
    );

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(format!("{DIR}{name}"))
    }

    fn read_fixture(name: &str) -> PlyMesh {
        match read_ply(&fixture(name)) {
            Ok(mesh) => mesh,
            Err(e) => panic!("{name}: {e}"),
        }
    }

    fn parse(bytes: &[u8]) -> Result<PlyMesh> {
        parse_ply(bytes, Path::new("mem.ply"))
    }

    /// The detail of the `Error::Ply` that parsing `bytes` must produce.
    fn err_of(bytes: &[u8]) -> String {
        match parse(bytes) {
            Err(Error::Ply { path, detail }) => {
                assert_eq!(path, Path::new("mem.ply"));
                detail
            }
            Err(e) => panic!("expected a PLY error, got {e}"),
            Ok(mesh) => panic!("expected a PLY error, got {mesh:?}"),
        }
    }

    fn fixture_err(name: &str) -> String {
        let path = fixture(name);
        match read_ply(&path) {
            Err(Error::Ply { path: p, detail }) => {
                assert_eq!(p, path);
                detail
            }
            Err(e) => panic!("{name}: expected a PLY error, got {e}"),
            Ok(mesh) => panic!("{name}: expected a PLY error, got {mesh:?}"),
        }
    }

    /// A binary body writer: `put!(w, 1.0f32, 2u8)` appends in `w`'s byte order.
    struct Bin {
        be: bool,
        out: Vec<u8>,
    }

    impl Bin {
        fn new(header: &str, be: bool) -> Self {
            Self {
                be,
                out: header.as_bytes().to_vec(),
            }
        }
    }

    macro_rules! put {
        ($w:expr, $($v:expr),+ $(,)?) => {{
            $(
                let v = $v;
                if $w.be {
                    $w.out.extend_from_slice(&v.to_be_bytes());
                } else {
                    $w.out.extend_from_slice(&v.to_le_bytes());
                }
            )+
        }};
    }

    fn ascii_quads_mesh() -> PlyMesh {
        PlyMesh {
            positions: vec![
                [0.0, 0.0, 0.0],
                [1.0, 0.0, 0.0],
                [1.0, 1.0, 0.0],
                [0.0, 1.0, 0.0],
                [0.5, 2.0, 0.25],
                [-1.5, 0.5, -2.0],
            ],
            normals: None,
            colors_rgb: Some(vec![
                [255, 0, 0],
                [0, 255, 0],
                [0, 0, 255],
                [10, 20, 30],
                [1, 2, 3],
                [200, 100, 50],
            ]),
            vertex_texcoords: None,
            triangles: vec![
                [0, 1, 2],
                [0, 2, 3],
                [3, 2, 4],
                [0, 1, 2],
                [0, 2, 4],
                [0, 4, 5],
            ],
            face_texcoords: None,
            texture_file: None,
        }
    }

    #[test]
    fn ascii_quads_and_colours() {
        assert_eq!(read_fixture("ascii_quads_colors.ply"), ascii_quads_mesh());
    }

    #[test]
    fn crlf_lines_read_the_same() {
        let bytes = std::fs::read(fixture("ascii_quads_colors.ply")).unwrap();
        let text = String::from_utf8(bytes).unwrap().replace('\n', "\r\n");
        assert_eq!(parse(text.as_bytes()).unwrap(), ascii_quads_mesh());
    }

    #[test]
    fn trailing_garbage_is_ignored() {
        let mut bytes = std::fs::read(fixture("ascii_quads_colors.ply")).unwrap();
        bytes.extend_from_slice(b"9 9 9 trailing words \xff\x00");
        assert_eq!(parse(&bytes).unwrap(), ascii_quads_mesh());
        let mut bin = big_endian_file(false);
        bin.extend_from_slice(b"\x01\x02garbage");
        assert_eq!(parse(&bin).unwrap(), big_endian_mesh());
    }

    const MIXED_HEADER: &str = "ply
format binary_big_endian 1.0
comment all scalar types, both spellings, float colours, s/t texture coordinates
element vertex 3
property double x
property int16 y
property uint z
property float32 nx
property float ny
property float nz
property float diffuse_red
property double diffuse_green
property uchar diffuse_blue
property uchar alpha
property float s
property float t
element face 2
property list uint8 uint16 vertex_indices
end_header
";

    /// A big-endian (or, with `be = false`, little-endian) file of known values.
    fn big_endian_file(be: bool) -> Vec<u8> {
        let header = if be {
            MIXED_HEADER.to_owned()
        } else {
            MIXED_HEADER.replace("binary_big_endian", "binary_little_endian")
        };
        let mut w = Bin::new(&header, be);
        put!(w, 0.1f64, -3i16, 4_000_000_000u32, 0.0f32, 0.0f32, 1.0f32);
        put!(w, 0.5f32, 1.2f64, 7u8, 128u8, 0.25f32, 0.75f32);
        put!(w, -1e300f64, 32767i16, 0u32, 0.6f32, -0.8f32, 0.0f32);
        put!(w, -0.1f32, 0.2f64, 255u8, 0u8, 1.0f32, 0.0f32);
        put!(w, 2.5f64, -32768i16, 1u32, 1.0f32, 0.0f32, 0.0f32);
        put!(w, 1.0f32, 0.0f64, 0u8, 9u8, -0.5f32, 2.0f32);
        put!(w, 3u8, 2u16, 1u16, 0u16);
        put!(w, 4u8, 0u16, 1u16, 2u16, 1u16);
        w.out
    }

    fn big_endian_mesh() -> PlyMesh {
        PlyMesh {
            positions: vec![
                [0.1, -3.0, 4_000_000_000.0],
                [-1e300, 32767.0, 0.0],
                [2.5, -32768.0, 1.0],
            ],
            normals: Some(vec![[0.0, 0.0, 1.0], [0.6, -0.8, 0.0], [1.0, 0.0, 0.0]]),
            // 0.5 -> round(127.5) = 128; 1.2 -> 255 (clamped); -0.1 -> 0; 0.2 -> 51.
            colors_rgb: Some(vec![[128, 255, 7], [0, 51, 255], [255, 0, 0]]),
            vertex_texcoords: Some(vec![[0.25, 0.75], [1.0, 0.0], [-0.5, 2.0]]),
            triangles: vec![[2, 1, 0], [0, 1, 2], [0, 2, 1]],
            face_texcoords: None,
            texture_file: None,
        }
    }

    #[test]
    fn big_endian_binary_exact_values() {
        assert_eq!(parse(&big_endian_file(true)).unwrap(), big_endian_mesh());
    }

    #[test]
    fn little_endian_binary_exact_values() {
        assert_eq!(parse(&big_endian_file(false)).unwrap(), big_endian_mesh());
    }

    #[test]
    fn every_scalar_type_in_ascii_and_binary() {
        let header = "ply
format FORMAT 1.0
element vertex 2
property char x
property uchar y
property short z
property ushort a
property int b
property uint c
property int8 d
property uint8 e
property int16 f
property uint16 g
property int32 h
property uint32 i
property float32 j
property float64 k
property double l
end_header
";
        let ascii = header.replace("FORMAT", "ascii")
            + "-128 255 -32768 65535 -2147483648 4294967295 -128 255 -32768 65535 2147483647 0 1.5 -2.25 1e-300\n"
            + "+127 0 32767 0 0 0 0 0 0 0 0 0 0 0 0\n";
        let mut w = Bin::new(&header.replace("FORMAT", "binary_little_endian"), false);
        put!(w, -128i8, 255u8, -32768i16, 65535u16, i32::MIN, u32::MAX);
        put!(
            w,
            -128i8,
            255u8,
            -32768i16,
            65535u16,
            i32::MAX,
            0u32,
            1.5f32,
            -2.25f64,
            1e-300f64
        );
        put!(w, 127i8, 0u8, 32767i16, 0u16, 0i32, 0u32, 0i8, 0u8, 0i16, 0u16, 0i32, 0u32);
        put!(w, 0.0f32, 0.0f64, 0.0f64);
        let expected = vec![[-128.0, 255.0, -32768.0], [127.0, 0.0, 32767.0]];
        for bytes in [ascii.into_bytes(), w.out] {
            let mesh = parse(&bytes).unwrap();
            assert_eq!(mesh.positions, expected);
            assert_eq!(mesh.triangles, Vec::<[u32; 3]>::new());
            assert_eq!(mesh.normals, None);
        }
    }

    #[test]
    fn ascii_float_is_rounded_to_f32_and_double_is_not() {
        let text = "ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty double y\nproperty float32 z\nend_header\n0.1 0.1 1e39\n";
        let err = err_of(text.as_bytes());
        assert_eq!(
            err,
            "vertex 0, property \"z\" (line 8, body line 1): coordinate inf is not finite (expected a finite number)"
        );
        let mesh = parse(text.replace("1e39", "3").as_bytes()).unwrap();
        assert_eq!(mesh.positions, vec![[f64::from(0.1f32), 0.1, 3.0]]);
    }

    fn extra_element_mesh() -> PlyMesh {
        PlyMesh {
            positions: vec![
                [1.0, 2.0, 3.0],
                [4.0, 5.0, 6.0],
                [7.0, 8.0, 9.0],
                [10.0, 11.0, 12.0],
            ],
            triangles: vec![[0, 1, 2], [1, 3, 2]],
            ..PlyMesh::default()
        }
    }

    #[test]
    fn extra_elements_and_properties_are_skipped_in_ascii() {
        assert_eq!(read_fixture("extra_element.ply"), extra_element_mesh());
    }

    #[test]
    fn extra_elements_and_properties_are_skipped_in_binary() {
        let text = std::fs::read_to_string(fixture("extra_element.ply")).unwrap();
        let end = text.find("end_header\n").unwrap() + "end_header\n".len();
        for be in [false, true] {
            let format = if be {
                "binary_big_endian"
            } else {
                "binary_little_endian"
            };
            let header = text[..end].replace("ascii", format);
            let mut w = Bin::new(&header, be);
            // vertex: x, confidence, list uchar float extra, y, z
            put!(w, 1.0f32, 0.9f32, 2u8, 7.0f32, 8.0f32, 2.0f32, 3.0f32);
            put!(w, 4.0f32, 0.8f32, 0u8, 5.0f32, 6.0f32);
            put!(w, 7.0f32, 0.7f32, 1u8, -1.0f32, 8.0f32, 9.0f32);
            put!(w, 10.0f32, 0.6f32, 3u8, 1.0f32, 2.0f32, 3.0f32, 11.0f32, 12.0f32);
            // material: list uchar uchar name, double shininess
            put!(w, 3u8, 65u8, 66u8, 67u8, 0.5f64);
            put!(w, 0u8, 1e3f64);
            // face: uchar flags, list uchar uint vertex_index, int16 tag
            put!(w, 1u8, 3u8, 0u32, 1u32, 2u32, -7i16);
            put!(w, 0u8, 3u8, 1u32, 3u32, 2u32, 32767i16);
            // edge: int vertex1, int vertex2
            put!(w, 0i32, 1i32);
            assert_eq!(parse(&w.out).unwrap(), extra_element_mesh(), "be = {be}");
            // The edge element must be complete: cutting its last byte is an error.
            w.out.pop();
            let end = w.out.len();
            assert_eq!(
                err_of(&w.out),
                format!(
                    "edge 0, property \"vertex2\": expected 4 bytes of int at byte {}, file ends at byte {end} (header line 17 declares 1 \"edge\" entries of at least 8 bytes each, which need at least 8 bytes, but only 7 bytes follow byte {})",
                    end - 3,
                    end - 7
                )
            );
        }
    }

    #[test]
    fn texture_comment_and_face_texcoords() {
        let mesh = read_fixture("textured.ply");
        assert_eq!(mesh.texture_file.as_deref(), Some("obj_000001.png"));
        assert_eq!(mesh.triangles, vec![[0, 1, 2], [0, 2, 3], [0, 2, 3]]);
        assert_eq!(
            mesh.face_texcoords,
            Some(vec![
                [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]],
                [[0.0, 0.0], [1.0, 1.0], [0.0, 1.0]],
                [[0.0, 0.5], [1.0, 0.5], [0.25, 0.75]],
            ])
        );
        assert_eq!(mesh.vertex_texcoords, None);
        assert_eq!(mesh.colors_rgb, None);
        assert_eq!(mesh.positions.len(), 4);
    }

    #[test]
    fn face_texcoord_count_must_match_indices() {
        let text = std::fs::read_to_string(fixture("textured.ply"))
            .unwrap()
            .replace("6 0 0.5 1 0.5 0.25 0.75", "4 0 0.5 1 0.5");
        assert_eq!(
            err_of(text.as_bytes()),
            "face 1, property \"texcoord\" (line 19, body line 6): 4 values for 3 vertex indices (expected 6)"
        );
    }

    #[test]
    fn vertex_texcoord_names() {
        let file = |props: &str, values: &str| {
            format!(
                "ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\nproperty float z\n{props}end_header\n1 2 3 {values}\n"
            )
        };
        let uv = |text: String| parse(text.as_bytes()).unwrap().vertex_texcoords;
        let cases = [
            ("property float texture_u\nproperty float texture_v\n", "0.25 0.5", Some(vec![[0.25, 0.5]])),
            ("property float s\nproperty float t\n", "0.5 1", Some(vec![[0.5, 1.0]])),
            ("property float u\nproperty float v\n", "1 0.75", Some(vec![[1.0, 0.75]])),
            (
                "property float u\nproperty float v\nproperty float texture_v\nproperty float texture_u\n",
                "9 9 0.5 0.25",
                Some(vec![[0.25, 0.5]]),
            ),
            ("property float u\n", "0.5", None),
        ];
        for (props, values, expected) in cases {
            assert_eq!(uv(file(props, values)), expected, "{props}");
        }
    }

    #[test]
    fn normals_and_colours_need_all_three() {
        let text = "ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\nproperty float z\nproperty float nx\nproperty float ny\nproperty uchar red\nproperty uchar green\nend_header\n1 2 3 0 1 5 6\n";
        let mesh = parse(text.as_bytes()).unwrap();
        assert_eq!(mesh.normals, None);
        assert_eq!(mesh.colors_rgb, None);
        assert_eq!(mesh.positions, vec![[1.0, 2.0, 3.0]]);
    }

    #[test]
    fn error_no_magic() {
        assert_eq!(
            fixture_err("err_no_magic.ply"),
            "header line 1: expected the magic \"ply\", found \"plx\""
        );
        assert_eq!(
            err_of(b""),
            "header line 1: expected the magic \"ply\", the file is empty"
        );
    }

    #[test]
    fn error_no_format() {
        assert_eq!(
            fixture_err("err_no_format.ply"),
            "header line 9: end_header before any format line (expected \"format <ascii, binary_little_endian or binary_big_endian> 1.0\" as line 2)"
        );
    }

    #[test]
    fn error_unknown_format() {
        assert_eq!(
            fixture_err("err_unknown_format.ply"),
            "header line 2: unknown format \"binary_middle_endian\" (expected ascii, binary_little_endian or binary_big_endian)"
        );
        assert_eq!(
            err_of(b"ply\nformat ascii 2.0\nend_header\n"),
            "header line 2: unsupported format version \"2.0\" (expected 1.0)"
        );
    }

    #[test]
    fn error_no_end_header() {
        assert_eq!(
            fixture_err("err_no_end_header.ply"),
            "header has no end_header line (the file ends after header line 8)"
        );
    }

    #[test]
    fn error_unknown_property_type() {
        assert_eq!(
            fixture_err("err_unknown_type.ply"),
            "header line 5: unknown property type \"flaot\" (expected char, uchar, short, ushort, int, uint, float, double or int8..float64)"
        );
    }

    #[test]
    fn error_header_keywords() {
        assert_eq!(
            err_of(b"ply\nformat ascii 1.0\nelemnt vertex 3\nend_header\n"),
            "header line 3: unknown keyword \"elemnt\" (expected format, comment, obj_info, element, property or end_header)"
        );
        assert_eq!(
            err_of(b"ply\nformat ascii 1.0\nproperty float x\nend_header\n"),
            "header line 3: property before any element line (expected \"element <name> <count>\" first)"
        );
        assert_eq!(
            err_of(b"ply\nformat ascii 1.0\nelement vertex -1\nend_header\n"),
            "header line 3: element \"vertex\" count \"-1\" is not a non-negative integer"
        );
        assert_eq!(
            err_of(b"ply\nformat ascii 1.0\nelement face 1\nproperty list float int vertex_indices\nend_header\n"),
            "header line 4: list count type \"float\" of property \"vertex_indices\" is not an integer type (expected char, uchar, short, ushort, int, uint or int8..uint32)"
        );
    }

    #[test]
    fn error_vertex_without_y() {
        assert_eq!(
            fixture_err("err_vertex_no_y.ply"),
            "header line 3: element \"vertex\" has no property \"y\" (expected x, y and z; it has properties: x, z)"
        );
        assert_eq!(
            err_of(b"ply\nformat ascii 1.0\nelement face 0\nproperty list uchar int vertex_indices\nend_header\n"),
            "header (lines 1..=5): no element \"vertex\" (expected \"element vertex <count>\" with properties x, y, z)"
        );
    }

    #[test]
    fn error_face_with_two_indices() {
        assert_eq!(
            fixture_err("err_face_two_indices.ply"),
            "face 1, property \"vertex_indices\" (line 14, body line 5): 2 vertex indices (expected at least 3)"
        );
    }

    #[test]
    fn error_negative_list_count() {
        let text = "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\nelement face 1\nproperty list char int vertex_indices\nend_header\n0 0 0\n1 0 0\n0 1 0\n-1 0 1 2\n";
        assert_eq!(
            err_of(text.as_bytes()),
            "face 0, property \"vertex_indices\" (line 13, body line 4): list count -1 is negative"
        );
    }

    #[test]
    fn error_face_index_out_of_range() {
        assert_eq!(
            fixture_err("err_face_index_range.ply"),
            "face 1, property \"vertex_indices\" item 2 (line 14, body line 5): vertex index 3 is out of range (element \"vertex\" has 3 entries)"
        );
    }

    #[test]
    fn error_truncated_binary_vertex() {
        // Header: 169 bytes; two full vertices (24 bytes), then x and half of y.
        assert_eq!(
            fixture_err("err_truncated_vertex.ply"),
            "vertex 2, property \"y\": expected 4 bytes of float at byte 197, file ends at byte 199 (header line 3 declares 3 \"vertex\" entries of at least 12 bytes each, which need at least 36 bytes, but only 30 bytes follow byte 169)"
        );
    }

    #[test]
    fn error_truncated_binary_face() {
        // Header 169 + 3 vertices 36 + count byte: the list starts at byte 206.
        assert_eq!(
            fixture_err("err_truncated_face.ply"),
            "face 0, property \"vertex_indices\": expected a list of 3 int (12 bytes) at byte 206, file ends at byte 216"
        );
    }

    #[test]
    fn error_truncated_binary_at_every_length() {
        let bytes = big_endian_file(true);
        let body_start = MIXED_HEADER.len();
        for len in body_start..bytes.len() {
            let err = err_of(&bytes[..len]);
            let where_ = ["vertex ", "face "];
            assert!(where_.iter().any(|w| err.starts_with(w)), "{len}: {err}");
            assert!(err.contains(", property \""), "{len}: {err}");
            assert!(
                err.contains(&format!("file ends at byte {len}")),
                "{len}: {err}"
            );
        }
    }

    #[test]
    fn error_ascii_not_a_number() {
        assert_eq!(
            fixture_err("err_ascii_not_number.ply"),
            "vertex 1, property \"z\" (line 11, body line 2): \"abc\" is not a number (expected a value of type float)"
        );
        let text = std::fs::read_to_string(fixture("ascii_quads_colors.ply")).unwrap();
        assert_eq!(
            err_of(text.replace("0 1 0 10 20 30", "0 1 0 10 2.5 30").as_bytes()),
            "vertex 3, property \"green\" (line 17, body line 4): \"2.5\" is not an integer (expected a value of type uchar)"
        );
        assert_eq!(
            err_of(text.replace("0 1 0 10 20 30", "0 1 0 10 256 30").as_bytes()),
            "vertex 3, property \"green\" (line 17, body line 4): 256 is out of range (expected a value of type uchar: 0..=255)"
        );
    }

    #[test]
    fn error_ascii_too_few_tokens() {
        assert_eq!(
            fixture_err("err_ascii_too_few.ply"),
            "face 0, property \"vertex_indices\" item 2 (line 13, body line 4): the line ends early (expected a vertex index of type int)"
        );
        let text = "ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\nproperty float z\nend_header\n0.0 0.0 0.0\n1.0 1.0\n";
        assert_eq!(
            err_of(text.as_bytes()),
            "vertex 1, property \"z\" (line 9, body line 2): the line ends early (expected a value of type float)"
        );
        let text = text.replace("1.0 1.0\n", "1.0 1.0");
        assert_eq!(
            err_of(text.as_bytes()),
            "vertex 1, property \"z\": expected a value of type float, the file ends at line 9, body line 2"
        );
    }

    #[test]
    fn error_ascii_too_many_tokens() {
        let text = std::fs::read_to_string(fixture("ascii_quads_colors.ply")).unwrap();
        assert_eq!(
            err_of(text.replace("0 1 0 10 20 30", "0 1 0 10 20 30 40").as_bytes()),
            "vertex 3 (line 17, body line 4): extra value \"40\" after the last property \"blue\" (expected the line to end: one vertex per line)"
        );
        assert_eq!(
            err_of(text.replace("3 3 2 4", "3 3 2 4 5").as_bytes()),
            "face 1 (line 21, body line 8): extra value \"5\" after the last property \"vertex_indices\" (expected the line to end: one face per line)"
        );
    }

    #[test]
    fn ascii_blank_lines_and_spacing_are_tolerated() {
        let text = std::fs::read_to_string(fixture("ascii_quads_colors.ply"))
            .unwrap()
            .replace("end_header\n", "end_header\n\n  \t\n")
            .replace("0 1 0 10 20 30\n", "\t0  1 0 10 20 30 \t \n\n")
            .replace('\n', "\r\n");
        assert_eq!(parse(text.as_bytes()).unwrap(), ascii_quads_mesh());
    }

    #[test]
    fn error_non_finite_coordinates() {
        assert_eq!(
            fixture_err("err_nan.ply"),
            "vertex 1, property \"y\" (line 11, body line 2): coordinate NaN is not finite (expected a finite number)"
        );
        let header = "ply\nformat binary_little_endian 1.0\nelement vertex 2\nproperty float x\nproperty double y\nproperty float z\nend_header\n";
        let mut w = Bin::new(header, false);
        put!(w, 0.0f32, 0.0f64, 0.0f32, 1.0f32, 0.0f64, f32::NEG_INFINITY);
        assert_eq!(
            err_of(&w.out),
            "vertex 1, property \"z\": coordinate -inf is not finite (expected a finite number)"
        );
    }

    #[test]
    fn error_huge_element_count() {
        // 1e12 vertices of 12 bytes claimed; the body (from byte 181) has 49 bytes.
        assert_eq!(
            fixture_err("err_huge_count.ply"),
            "vertex 4, property \"x\": expected 4 bytes of float at byte 229, file ends at byte 230 (header line 3 declares 1000000000000 \"vertex\" entries of at least 12 bytes each, which need at least 12000000000000 bytes, but only 49 bytes follow byte 181)"
        );
        let text = "ply\nformat ascii 1.0\nelement vertex 1000000000000\nproperty float x\nproperty float y\nproperty float z\nend_header\n0 0 0\n";
        assert_eq!(
            err_of(text.as_bytes()),
            "vertex 1, property \"x\": expected a value of type float, the file ends at line 9, body line 2 (header line 3 declares 1000000000000 \"vertex\" entries of 3 values each, which need at least 5999999999999 bytes, but only 6 bytes follow line 8, body line 1)"
        );
        let text = "ply\nformat binary_big_endian 1.0\nelement vertex 0\nproperty float x\nproperty float y\nproperty float z\nelement face 4000000000\nproperty list uint int vertex_indices\nend_header\n";
        assert_eq!(
            err_of(text.as_bytes()),
            format!("face 0, property \"vertex_indices\": expected 4 bytes of uint at byte {0}, file ends at byte {0} (header line 7 declares 4000000000 \"face\" entries of at least 4 bytes each, which need at least 16000000000 bytes, but only 0 bytes follow byte {0})", text.len())
        );
    }

    #[test]
    fn empty_elements_are_fine() {
        let text = "ply\nformat binary_little_endian 1.0\nelement vertex 0\nproperty float x\nproperty float y\nproperty float z\nelement face 0\nproperty list uchar int vertex_indices\nelement nothing 1000000000000\nend_header\n";
        let mesh = parse(text.as_bytes()).unwrap();
        assert_eq!(mesh, PlyMesh::default());
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let path = fixture("does_not_exist.ply");
        match read_ply(&path) {
            Err(Error::Io { path: p, source }) => {
                assert_eq!(p, path);
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("expected an Io error, got {other:?}"),
        }
    }

    /// The real YCB-V model: compared with a tiny independent reader of its vertex block.
    #[test]
    fn real_model_obj_000001() {
        let bytes = std::fs::read(REAL_MODEL).unwrap();
        let mesh = read_ply(Path::new(REAL_MODEL)).unwrap();
        assert_eq!(mesh.positions.len(), 3785);
        assert_eq!(mesh.triangles.len(), 7800);
        assert_eq!(mesh.normals.as_ref().map(Vec::len), Some(3785));
        assert_eq!(mesh.colors_rgb.as_ref().map(Vec::len), Some(3785));
        assert_eq!(mesh.vertex_texcoords, None);
        assert_eq!(mesh.face_texcoords, None);
        assert_eq!(mesh.texture_file, None);
        assert_eq!(mesh.colors_rgb.as_ref().unwrap()[0], [158, 161, 160]);
        assert_eq!(mesh.colors_rgb.as_ref().unwrap()[3784], [127, 139, 168]);
        assert_eq!(
            mesh.normals.as_ref().unwrap()[0],
            [-0.755_650_4_f32, -0.433_647_5_f32, 0.490_858_73_f32]
        );
        assert_eq!(mesh.triangles[0], [0, 1, 2]);
        assert_eq!(mesh.triangles[7799], [3781, 3145, 3782]);
        assert_eq!(
            mesh.positions[0],
            [
                f64::from(-43.963_585_f32),
                f64::from(-25.273_253_f32),
                f64::from(-67.148_8_f32)
            ]
        );

        // Independent check: find the vertex block and stride from the header by hand,
        // then compare x, y, z as little-endian f32, byte for byte. (SHA-256 of these
        // 3785 * 12 bytes in file order: 8c1535d4...2f8c936696.)
        let end = bytes
            .windows(11)
            .position(|w| w == b"end_header\n")
            .unwrap()
            + 11;
        let header = std::str::from_utf8(&bytes[..end]).unwrap();
        assert!(header.contains("format binary_little_endian 1.0\n"));
        let mut in_vertex = false;
        let mut stride = 0;
        let mut offsets = [usize::MAX; 3];
        for line in header.lines() {
            let words: Vec<&str> = line.split(' ').collect();
            match words[..] {
                ["element", name, count] => {
                    in_vertex = name == "vertex";
                    if in_vertex {
                        assert_eq!(count, "3785");
                    }
                }
                ["property", ty, name] if in_vertex => {
                    if let Some(i) = ["x", "y", "z"].iter().position(|&n| n == name) {
                        assert_eq!(ty, "float");
                        offsets[i] = stride;
                    }
                    stride += match ty {
                        "float" | "int" | "uint" => 4,
                        "uchar" | "char" => 1,
                        "short" | "ushort" => 2,
                        "double" => 8,
                        other => panic!("type {other}"),
                    };
                }
                _ => {}
            }
        }
        assert_eq!(stride, 27);
        assert_eq!(offsets, [0, 4, 8]);
        for (k, p) in mesh.positions.iter().enumerate() {
            for (j, &off) in offsets.iter().enumerate() {
                let at = end + k * stride + off;
                let file = &bytes[at..at + 4];
                let ours = p[j] as f32;
                assert_eq!(f64::from(ours), p[j], "vertex {k} coord {j} is not an f32");
                assert_eq!(ours.to_le_bytes(), file, "vertex {k} coord {j}");
            }
        }
    }

    const FUZZ_ASCII: &str = "ply
format ascii 1.0
comment TextureFile t.png
element vertex 4
property float x
property double y
property float z
property uchar red
property uchar green
property uchar blue
property list uchar int extra
element face 2
property list uchar int vertex_indices
property list uchar float texcoord
element other 1
property short a
end_header
0 0 0 1 2 3 0
1 0 0 4 5 6 2 7 8
1 1 0 7 8 9 1 3
0 1 0 10 11 12 0
4 0 1 2 3 8 0 0 1 0 1 1 0 1
3 0 2 3 6 0 0.5 1 0.5 0.25 0.75
-5
";

    fn fuzz_binary() -> Vec<u8> {
        let header = FUZZ_ASCII[..FUZZ_ASCII.find("end_header\n").unwrap() + 11]
            .replace("ascii", "binary_little_endian");
        let mut w = Bin::new(&header, false);
        put!(w, 0.0f32, 0.0f64, 0.0f32, 1u8, 2u8, 3u8, 0u8);
        put!(w, 1.0f32, 0.0f64, 0.0f32, 4u8, 5u8, 6u8, 2u8, 7i32, 8i32);
        put!(w, 1.0f32, 1.0f64, 0.0f32, 7u8, 8u8, 9u8, 1u8, 3i32);
        put!(w, 0.0f32, 1.0f64, 0.0f32, 10u8, 11u8, 12u8, 0u8);
        put!(w, 4u8, 0i32, 1i32, 2i32, 3i32, 8u8);
        put!(w, 0.0f32, 0.0f32, 1.0f32, 0.0f32, 1.0f32, 1.0f32, 0.0f32, 1.0f32);
        put!(w, 3u8, 0i32, 2i32, 3i32, 6u8);
        put!(w, 0.0f32, 0.5f32, 1.0f32, 0.5f32, 0.25f32, 0.75f32);
        put!(w, -5i16);
        w.out
    }

    #[test]
    fn fuzz_inputs_are_valid() {
        let a = parse(FUZZ_ASCII.as_bytes()).unwrap();
        let b = parse(&fuzz_binary()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.triangles, vec![[0, 1, 2], [0, 2, 3], [0, 2, 3]]);
        assert_eq!(a.texture_file.as_deref(), Some("t.png"));
    }

    /// Applies byte edits (overwrite, insert, delete) and an optional truncation.
    fn mutate(
        mut bytes: Vec<u8>,
        edits: &[(prop::sample::Index, u8, u8)],
        cut: Option<prop::sample::Index>,
    ) -> Vec<u8> {
        for (at, byte, op) in edits {
            let len = bytes.len();
            match op % 3 {
                0 if len > 0 => bytes[at.index(len)] = *byte,
                1 => bytes.insert(at.index(len + 1), *byte),
                2 if len > 0 => {
                    bytes.remove(at.index(len));
                }
                _ => {}
            }
        }
        if let Some(cut) = cut {
            let len = cut.index(bytes.len() + 1);
            bytes.truncate(len);
        }
        bytes
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn mutated_binary_never_panics(
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), any::<u8>()), 0..6),
            cut in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            let bytes = mutate(fuzz_binary(), &edits, cut);
            let _ = parse(&bytes);
        }

        #[test]
        fn mutated_ascii_never_panics(
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), any::<u8>()), 0..6),
            cut in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            let bytes = mutate(FUZZ_ASCII.as_bytes().to_vec(), &edits, cut);
            let _ = parse(&bytes);
        }

        #[test]
        fn mutated_digits_never_panic(
            edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..10), 1..6),
            binary in any::<bool>(),
        ) {
            // Digit-for-digit edits keep the tokens numbers, so they reach counts,
            // list lengths and indices rather than failing in the tokenizer.
            let mut bytes = if binary { fuzz_binary() } else { FUZZ_ASCII.as_bytes().to_vec() };
            let digits: Vec<usize> =
                (0..bytes.len()).filter(|&i| bytes[i].is_ascii_digit()).collect();
            for (at, d) in edits {
                let i = digits[at.index(digits.len())];
                bytes[i] = b'0' + d;
            }
            let _ = parse(&bytes);
        }

        #[test]
        fn random_body_never_panics(
            body in prop::collection::vec(any::<u8>(), 0..200),
            binary in any::<bool>(),
        ) {
            let source = if binary { fuzz_binary() } else { FUZZ_ASCII.as_bytes().to_vec() };
            let end = source.windows(11).position(|w| w == b"end_header\n").unwrap() + 11;
            let mut bytes = source[..end].to_vec();
            bytes.extend_from_slice(&body);
            let _ = parse(&bytes);
        }
    }
}
