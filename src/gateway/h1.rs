//! The HTTP/1.1 client side of the upstream leg, without IO: the request
//! head, the response head (parsed by `httparse`, hyper's own parser) and
//! the response body's framing. `upstream` drives them on the connection.
//!
//! The upstream is trusted configuration, but a broken one must end in a
//! 502 or a failed body, never a hang or a second response smuggled into
//! the next call: heads over 64 KiB, both `Content-Length` and
//! `Transfer-Encoding`, conflicting or non-numeric lengths, transfer codings
//! other than `chunked`, bad chunk sizes and `101 Switching Protocols` are
//! refused; interim (1xx) responses are skipped.

use std::mem::MaybeUninit;
use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

/// Largest response head (status line and headers), and largest trailer section.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most headers in a response head (hyper's default).
const MAX_HEADERS: usize = 100;
/// Longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;
/// Bytes read at once for a head; bodies read up to [`MAX_READ`].
pub const HEAD_READ: usize = 16 * 1024;
pub const MAX_READ: usize = 64 * 1024;

/// What was wrong with the upstream's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid upstream response: {0}")]
pub struct Invalid(pub &'static str);

/// The bytes read from a connection and not yet consumed.
///
/// `buf[..filled]` holds them; `buf[filled..]` is zeroed room to read into,
/// kept initialised so reads need no unsafe code: it is zeroed once when
/// the buffer grows, not before every read. Consumed bytes leave as
/// [`Bytes`] that share the buffer (header values, body frames), so nothing
/// is copied.
#[derive(Default)]
pub struct InBuf {
    buf: BytesMut,
    filled: usize,
}

impl InBuf {
    pub fn data(&self) -> &[u8] {
        &self.buf[..self.filled]
    }

    pub fn len(&self) -> usize {
        self.filled
    }

    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// The first `n` bytes, removed.
    pub fn take(&mut self, n: usize) -> Bytes {
        debug_assert!(n <= self.filled);
        self.filled -= n;
        self.buf.split_to(n).freeze()
    }

    /// Drops the first `n` bytes.
    pub fn skip(&mut self, n: usize) {
        debug_assert!(n <= self.filled);
        self.filled -= n;
        self.buf.advance(n);
    }

    /// Room to read into: what is left of the buffer, or about `want`
    /// bytes of a new (or reclaimed) one when little is left.
    pub fn spare(&mut self, want: usize) -> &mut [u8] {
        if self.buf.len() - self.filled < want.min(HEAD_READ) / 4 {
            self.buf.truncate(self.filled);
            self.buf.reserve(want);
            // Zeroed only as far as asked: the capacity a reserve hands
            // back may be far larger, and zeroing what no read will fill
            // is wasted.
            self.buf.resize(self.filled + want, 0);
        }
        &mut self.buf[self.filled..]
    }

    /// Counts `n` bytes just read into [`InBuf::spare`].
    pub fn filled(&mut self, n: usize) {
        debug_assert!(self.filled + n <= self.buf.len());
        self.filled += n;
    }
}

/// What the gateway changes in the headers it forwards: the ones it sets
/// (written first, `Host` among them) and the caller's it leaves out (the
/// key's header, and every name it sets). Applied while the head is
/// written, so the request's header map is never edited (a removal and
/// four insertions into it cost ~1,200 instructions per call).
#[derive(Clone, Copy, Default)]
pub struct Forwarded<'a> {
    pub add: &'a [(&'a HeaderName, &'a HeaderValue)],
    pub skip: &'a [&'a HeaderName],
}

/// A caller's request headers: as the gateway's connection loop read them
/// (the head's bytes and where each header lies in them, names in the
/// caller's spelling), or hyper's map. Looked up by lower-case name.
#[derive(Debug)]
pub enum CallHeaders {
    Raw { head: Bytes, spans: Vec<Span> },
    Map(HeaderMap),
}

/// The name and value of each header of a [`CallHeaders`], in order.
pub enum CallHeadersIter<'a> {
    Raw(&'a Bytes, std::slice::Iter<'a, Span>),
    Map(header::Iter<'a, HeaderValue>),
}

impl<'a> Iterator for CallHeadersIter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            CallHeadersIter::Raw(head, spans) => spans.next().map(|s| (&head[s.name.clone()], &head[s.value.clone()])),
            CallHeadersIter::Map(iter) => iter.next().map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
        }
    }
}

impl CallHeaders {
    pub fn iter(&self) -> CallHeadersIter<'_> {
        match self {
            CallHeaders::Raw { head, spans } => CallHeadersIter::Raw(head, spans.iter()),
            CallHeaders::Map(map) => CallHeadersIter::Map(map.iter()),
        }
    }

    /// Every value of the header `name` (lower case).
    pub fn values<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
        // hyper's map by its hash, not by a walk over every header.
        let (raw, map) = match self {
            CallHeaders::Raw { .. } => (Some(self.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| v)), None),
            CallHeaders::Map(map) => (None, Some(map.get_all(name).into_iter().map(HeaderValue::as_bytes))),
        };
        raw.into_iter().flatten().chain(map.into_iter().flatten())
    }

    /// The first value of the header `name` (lower case).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        match self {
            CallHeaders::Map(map) => map.get(name).map(HeaderValue::as_bytes),
            CallHeaders::Raw { head, spans } => {
                let span = spans.iter().find(|s| head[s.name.clone()].eq_ignore_ascii_case(name.as_bytes()))?;
                Some(&head[span.value.clone()])
            }
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The distinct header names, lower case.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.iter().map(|(n, _)| String::from_utf8_lossy(n).to_ascii_lowercase()).collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

/// A header value as text: ASCII only, as `HeaderValue::to_str` takes it.
/// (Every value here came through httparse, which admits no control
/// characters but the tab, so ASCII is visible ASCII.)
pub fn value_text(value: &[u8]) -> Option<&str> {
    if value.is_ascii() {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1),
/// in either direction.
const HOP_BY_HOP: [&[u8]; 8] =
    [b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"proxy-authorization"];

fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP.iter().any(|hop| name.eq_ignore_ascii_case(hop))
}

/// The items of a comma-separated header value (`Connection`), trimmed,
/// empty ones skipped.
pub fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim).filter(|item| !item.is_empty())
}

/// Writes one `name: value` header line.
pub fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes the request head: request line in origin form, the gateway's
/// headers, the caller's (less those `forwarded` leaves out, the
/// hop-by-hop ones and those the caller's `Connection` names), and
/// `Transfer-Encoding: chunked` when the body has no declared length
/// (after the caller's other codings, which the body still has).
pub fn encode_head(out: &mut Vec<u8>, method: &Method, target: &str, headers: &CallHeaders, forwarded: Forwarded<'_>, chunked: bool) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in forwarded.add {
        header_line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    // Headers the caller's `Connection` names are hop-by-hop too (rare) —
    // except the message's own framing and host: dropping `Content-Length`
    // would send the body as bytes with no length, which the upstream would
    // read as a request of its own (smuggling).
    let named: Vec<&[u8]> = headers
        .values("connection")
        .flat_map(list_items)
        .filter(|n| !n.eq_ignore_ascii_case(b"content-length") && !n.eq_ignore_ascii_case(b"host"))
        .collect();
    for (name, value) in headers.iter() {
        let left_out = forwarded.skip.iter().any(|s| name.eq_ignore_ascii_case(s.as_str().as_bytes()))
            || is_hop_by_hop(name)
            || named.iter().any(|n| name.eq_ignore_ascii_case(n));
        if !left_out {
            header_line(out, name, value);
        }
    }
    if chunked {
        transfer_encoding(out, headers);
    }
    out.extend_from_slice(b"\r\n");
}

/// `Transfer-Encoding` for a body sent chunked: the caller's codings
/// before its final `chunked` (`gzip, chunked`) are still on the body once
/// its chunks are read, so the upstream is told of them, or it would take
/// the coded bytes for the content. (Out of line: the common call has no
/// body, and [`encode_head`] stays small enough for its header lines to
/// be written inline.)
#[inline(never)]
fn transfer_encoding(out: &mut Vec<u8>, headers: &CallHeaders) {
    let mut codings: Vec<&[u8]> = headers.values("transfer-encoding").flat_map(list_items).collect();
    if codings.last().is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")) {
        codings.pop();
    }
    out.extend_from_slice(b"transfer-encoding: ");
    for coding in codings {
        out.extend_from_slice(coding);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(b"chunked\r\n");
}

/// The line before a chunk of `len` bytes (a request body sent chunked).
pub fn chunk_line(len: usize) -> Bytes {
    Bytes::from(format!("{len:x}\r\n"))
}

/// A response head, ready to become an `http::Response`.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    /// The headers to forward, as they came.
    pub headers: RawHeaders,
    pub body: Decoder,
    /// The upstream lets the connection carry another call after this one.
    pub keep_alive: bool,
}

/// Where one header's name and value lie in the head.
#[derive(Clone, Debug)]
pub struct Span {
    name: Range<usize>,
    value: Range<usize>,
}

impl Span {
    pub fn new(name: Range<usize>, value: Range<usize>) -> Span {
        Span { name, value }
    }
}

/// A response's headers as the upstream sent them: the head's bytes and
/// where each header to forward lies in them. The hop-by-hop ones (and
/// those `Connection` names) are left out, and so is `Content-Length`,
/// kept as a number: the side that answers the client frames the body
/// itself. Nothing is copied or parsed into a header map unless a header
/// map is asked for ([`RawHeaders::append_to`]).
#[derive(Debug)]
pub struct RawHeaders {
    head: Bytes,
    lines: Vec<Span>,
    content_length: Option<u64>,
}

impl RawHeaders {
    /// Name and value of each header, in the upstream's order and spelling.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.lines.iter().map(|s| (&self.head[s.name.clone()], &self.head[s.value.clone()]))
    }

    /// The body's declared length (also after `HEAD` or for a 304, where no body follows).
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    /// Appends the headers, and the declared length, to `map`, except
    /// those named in `except` (the ones the gateway sets itself).
    pub fn append_to(&self, map: &mut HeaderMap, except: &[&HeaderName]) {
        map.reserve(self.lines.len() + 1);
        for span in &self.lines {
            // The parser admitted only valid names and values.
            let Ok(name) = HeaderName::from_bytes(&self.head[span.name.clone()]) else { continue };
            if except.contains(&&name) {
                continue;
            }
            if let Ok(value) = HeaderValue::from_maybe_shared(self.head.slice(span.value.clone())) {
                map.append(name, value);
            }
        }
        if let Some(n) = self.content_length {
            if !except.contains(&&header::CONTENT_LENGTH) {
                map.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
        }
    }
}

/// Parses the response head at the start of `inbuf`, skipping interim
/// (1xx) responses. `Ok(None)`: incomplete, read more. `spans` is scratch
/// space kept by the connection.
pub fn parse_head(inbuf: &mut InBuf, spans: &mut Vec<Span>, head_request: bool) -> Result<Option<Head>, Invalid> {
    loop {
        if inbuf.is_empty() {
            return Ok(None);
        }
        let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let data = inbuf.data();
        let base = data.as_ptr() as usize;
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut response, data, &mut storage);
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
            Ok(httparse::Status::Partial) if data.len() < MAX_HEAD => return Ok(None),
            Ok(_) => return Err(Invalid("response head larger than 64 KiB")),
            Err(httparse::Error::TooManyHeaders) => return Err(Invalid("more than 100 response headers")),
            Err(_) => return Err(Invalid("malformed response head")),
        };
        let (Some(code), Some(minor)) = (response.code, response.version) else {
            return Err(Invalid("malformed response head"));
        };
        if (100..200).contains(&code) {
            if code == 101 {
                return Err(Invalid("101 Switching Protocols is not supported"));
            }
            inbuf.skip(len);
            continue;
        }
        spans.clear();
        for h in response.headers.iter() {
            let name = h.name.as_ptr() as usize - base;
            let value = h.value.as_ptr() as usize - base;
            spans.push(Span { name: name..name + h.name.len(), value: value..value + h.value.len() });
        }
        let head = inbuf.take(len);
        return build_head(head, spans, code, minor, head_request).map(Some);
    }
}

fn build_head(head: Bytes, spans: &[Span], code: u16, minor: u8, head_request: bool) -> Result<Head, Invalid> {
    let status = StatusCode::from_u16(code).map_err(|_| Invalid("malformed status code"))?;
    let mut lines = Vec::with_capacity(spans.len());
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = false;
    let mut keep_alive = false;
    let mut named: Vec<&[u8]> = Vec::new();
    for span in spans {
        let name = &head[span.name.clone()];
        let value = &head[span.value.clone()];
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = content_length(value)?;
            if length.is_some_and(|l| l != n) {
                return Err(Invalid("conflicting Content-Length headers"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if chunked || !trim(value).eq_ignore_ascii_case(b"chunked") {
                return Err(Invalid("Transfer-Encoding other than chunked"));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in list_items(value) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                } else {
                    named.push(token);
                }
            }
        } else if !is_hop_by_hop(name) {
            lines.push(span.clone());
        }
    }
    // Headers the `Connection` header names are hop-by-hop too (rare).
    if !named.is_empty() {
        lines.retain(|span| !named.iter().any(|n| n.eq_ignore_ascii_case(&head[span.name.clone()])));
    }
    if chunked && length.is_some() {
        return Err(Invalid("both Content-Length and Transfer-Encoding"));
    }
    let body = if head_request || code == 204 || code == 304 {
        Decoder::Length(0)
    } else if chunked {
        Decoder::Chunked(Chunk::Size)
    } else {
        length.map_or(Decoder::Eof, Decoder::Length)
    };
    let keep_alive = !close && (minor == 1 || keep_alive) && !matches!(body, Decoder::Eof);
    let headers = RawHeaders { head, lines, content_length: length };
    Ok(Head { status, headers, body, keep_alive })
}

fn trim(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

/// A `Content-Length` value: digits, or a list of the same digits ("5, 5").
fn content_length(value: &[u8]) -> Result<u64, Invalid> {
    let mut found: Option<u64> = None;
    for part in value.split(|&b| b == b',') {
        let digits = trim(part);
        if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(Invalid("invalid Content-Length"));
        }
        let n = digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if found.is_some_and(|f| f != n) {
            return Err(Invalid("conflicting Content-Length values"));
        }
        found = Some(n);
    }
    found.ok_or(Invalid("invalid Content-Length"))
}

/// Where a chunked body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes to go.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk, before the end of the trailer section.
    Trailers,
}

/// The response body's framing, and how far it has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// This many bytes to go.
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    Eof,
    /// The whole body has been read.
    Done,
}

/// One step through a body.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Data(Bytes),
    /// The buffer holds no more of the body: read more.
    More,
    End,
}

impl Decoder {
    pub fn is_done(&self) -> bool {
        *self == Decoder::Done
    }

    /// Body bytes still to come, when the framing says.
    pub fn remaining(&self) -> Option<u64> {
        match *self {
            Decoder::Length(n) => Some(n),
            Decoder::Done => Some(0),
            _ => None,
        }
    }

    /// The next piece of the body that `inbuf` holds. After a piece, the
    /// framing the buffer already holds behind it is consumed too, so the
    /// end of the body is known as soon as its last byte is.
    pub fn next(&mut self, inbuf: &mut InBuf) -> Result<Step, Invalid> {
        self.settle(inbuf)?;
        let data = match self {
            Decoder::Done => return Ok(Step::End),
            Decoder::Length(left) | Decoder::Chunked(Chunk::Data(left)) => {
                if inbuf.is_empty() {
                    return Ok(Step::More);
                }
                let n = (*left).min(inbuf.len() as u64);
                *left -= n;
                inbuf.take(n as usize)
            }
            Decoder::Eof => {
                if inbuf.is_empty() {
                    return Ok(Step::More);
                }
                inbuf.take(inbuf.len())
            }
            Decoder::Chunked(_) => return Ok(Step::More),
        };
        if *self == Decoder::Chunked(Chunk::Data(0)) {
            *self = Decoder::Chunked(Chunk::DataEnd);
        }
        // An error in what follows shows on the next call (the state stays
        // where it stopped); this piece is good.
        let _ = self.settle(inbuf);
        Ok(Step::Data(data))
    }

    /// The upstream closed the connection: the end of a close-delimited
    /// body, a truncated one otherwise.
    pub fn eof(&mut self) -> Result<(), Invalid> {
        match self {
            Decoder::Eof | Decoder::Done => {
                *self = Decoder::Done;
                Ok(())
            }
            _ => Err(Invalid("the upstream closed the connection before the body's end")),
        }
    }

    /// Moves past the framing the buffer holds (chunk-size lines, the CRLF
    /// after a chunk, the trailer section), stopping at data or when more
    /// bytes are needed.
    fn settle(&mut self, inbuf: &mut InBuf) -> Result<(), Invalid> {
        loop {
            match *self {
                Decoder::Length(0) => *self = Decoder::Done,
                Decoder::Chunked(Chunk::Size) => match chunk_size(inbuf.data())? {
                    None => return Ok(()),
                    Some((used, size)) => {
                        inbuf.skip(used);
                        *self = Decoder::Chunked(if size == 0 { Chunk::Trailers } else { Chunk::Data(size) });
                    }
                },
                Decoder::Chunked(Chunk::DataEnd) => {
                    let data = inbuf.data();
                    if data.len() < 2 {
                        return if data.first().is_some_and(|&b| b != b'\r') { Err(Invalid("chunk not followed by CRLF")) } else { Ok(()) };
                    }
                    if &data[..2] != b"\r\n" {
                        return Err(Invalid("chunk not followed by CRLF"));
                    }
                    inbuf.skip(2);
                    *self = Decoder::Chunked(Chunk::Size);
                }
                Decoder::Chunked(Chunk::Trailers) => match trailers(inbuf.data())? {
                    None => return Ok(()),
                    Some(used) => {
                        // Trailers are not forwarded (neither were they by hyper's client).
                        inbuf.skip(used);
                        *self = Decoder::Done;
                    }
                },
                _ => return Ok(()),
            }
        }
    }
}

/// A chunk-size line: hex digits (at most 16), optional extensions, CRLF.
/// `Ok(None)`: incomplete.
fn chunk_size(buf: &[u8]) -> Result<Option<(usize, u64)>, Invalid> {
    let bad = Invalid("invalid chunk size");
    let mut size: u64 = 0;
    let mut digits = 0;
    for &b in buf {
        let Some(d) = (b as char).to_digit(16) else { break };
        if digits == 16 {
            return Err(bad);
        }
        size = size << 4 | u64::from(d);
        digits += 1;
    }
    if digits == buf.len() {
        return Ok(None);
    }
    if digits == 0 {
        return Err(bad);
    }
    let rest = &buf[digits..];
    let Some(lf) = rest.iter().take(MAX_CHUNK_LINE).position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_CHUNK_LINE { Err(Invalid("chunk-size line too long")) } else { check_extension(rest).map(|()| None) };
    };
    if lf == 0 || rest[lf - 1] != b'\r' {
        return Err(bad);
    }
    check_extension(&rest[..lf - 1])?;
    Ok(Some((digits + lf + 1, size)))
}

/// What may follow the size on its line: whitespace, then `;` and
/// extensions (ignored), no control characters but tabs.
fn check_extension(rest: &[u8]) -> Result<(), Invalid> {
    let ext = rest.trim_ascii_start();
    let bad = Invalid("invalid chunk extension");
    // A CR is allowed only as the line's last byte, still to be followed by LF.
    let ext = ext.strip_suffix(b"\r").unwrap_or(ext);
    if !ext.is_empty() && ext[0] != b';' {
        return Err(bad);
    }
    if ext.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(bad);
    }
    Ok(())
}

/// The trailer section after the last chunk (ends with an empty line).
fn trailers(buf: &[u8]) -> Result<Option<usize>, Invalid> {
    if buf.is_empty() {
        return Ok(None);
    }
    match httparse::parse_headers(buf, &mut [httparse::EMPTY_HEADER; 32]) {
        Ok(httparse::Status::Complete((used, _))) => Ok(Some(used)),
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => Ok(None),
        Ok(httparse::Status::Partial) => Err(Invalid("trailer section larger than 64 KiB")),
        Err(_) => Err(Invalid("malformed trailer section")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarded_head_has_the_gateways_headers_first_and_none_it_leaves_out() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("gateway.example"));
        headers.insert("x-api-key", HeaderValue::from_static("kt_live_secret"));
        headers.append("x-consumer-id", HeaderValue::from_static("forged-1"));
        headers.append("x-consumer-id", HeaderValue::from_static("forged-2"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic kept"));
        let (host, consumer) = (HeaderValue::from_static("up:8080"), HeaderValue::from_static("cons_1"));
        let x_api_key = HeaderName::from_static("x-api-key");
        let x_consumer_id = HeaderName::from_static("x-consumer-id");
        let add = [(&header::HOST, &host), (&x_consumer_id, &consumer)];
        let skip = [&x_api_key, &header::HOST, &x_consumer_id];
        let mut out = Vec::new();
        let headers = CallHeaders::Map(headers);
        encode_head(&mut out, &Method::GET, "/a?b=1", &headers, Forwarded { add: &add, skip: &skip }, false);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /a?b=1 HTTP/1.1\r\nhost: up:8080\r\nx-consumer-id: cons_1\r\naccept: */*\r\nauthorization: Basic kept\r\n\r\n"
        );
        // Nothing added or left out: the caller's headers as they are, and the chunked body's framing.
        let mut out = Vec::new();
        encode_head(&mut out, &Method::POST, "/", &headers, Forwarded::default(), true);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("POST / HTTP/1.1\r\nhost: gateway.example\r\n"), "{text}");
        assert!(text.contains("x-api-key: kt_live_secret\r\n") && text.matches("x-consumer-id: forged").count() == 2, "{text}");
        assert!(text.ends_with("transfer-encoding: chunked\r\n\r\n"), "{text}");
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_stay_behind() {
        let head = Bytes::from_static(b"Accept: */*\r\nConnection: keep-alive, X-Custom\r\nX-Custom: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Other: 2\r\n");
        let mut spans = Vec::new();
        let mut at = 0;
        for line in head.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let colon = line.iter().position(|&b| b == b':').unwrap();
            spans.push(Span::new(at..at + colon, at + colon + 2..at + line.len() - 1));
            at += line.len() + 1;
        }
        let headers = CallHeaders::Raw { head, spans };
        assert_eq!(headers.get("x-custom"), Some(b"1".as_slice()), "looked up in any case");
        assert_eq!(headers.names(), vec!["accept", "connection", "keep-alive", "te", "x-custom", "x-other"]);
        let mut out = Vec::new();
        encode_head(&mut out, &Method::GET, "/", &headers, Forwarded::default(), false);
        assert_eq!(String::from_utf8(out).unwrap(), "GET / HTTP/1.1\r\nAccept: */*\r\nX-Other: 2\r\n\r\n");
        assert_eq!(value_text(b"ok\tvalue"), Some("ok\tvalue"));
        assert_eq!(value_text(b"caf\xc3\xa9"), None, "obs-text is not text");
    }

    fn inbuf(bytes: &[u8]) -> InBuf {
        let mut b = InBuf::default();
        let spare = b.spare(bytes.len().max(HEAD_READ));
        spare[..bytes.len()].copy_from_slice(bytes);
        b.filled(bytes.len());
        b
    }

    fn head(bytes: &[u8]) -> Result<Option<Head>, Invalid> {
        parse_head(&mut inbuf(bytes), &mut Vec::new(), false)
    }

    fn map(h: &Head) -> HeaderMap {
        let mut map = HeaderMap::new();
        h.headers.append_to(&mut map, &[]);
        map
    }

    fn body(decoder: Decoder, bytes: &[u8]) -> Result<(Vec<u8>, Decoder, usize), Invalid> {
        let mut b = inbuf(bytes);
        let mut d = decoder;
        let mut out = Vec::new();
        loop {
            match d.next(&mut b)? {
                Step::Data(data) => out.extend_from_slice(&data),
                Step::More | Step::End => return Ok((out, d, b.len())),
            }
        }
    }

    #[test]
    fn chunk_sizes_are_strict() {
        assert_eq!(chunk_size(b"1a\r\n"), Ok(Some((4, 26))));
        assert_eq!(chunk_size(b"1A;name=value\r\nrest"), Ok(Some((15, 26))));
        assert_eq!(chunk_size(b"10 ;x\r\n"), Ok(Some((7, 16))));
        assert_eq!(chunk_size(b"ffffffffffffffff\r\n"), Ok(Some((18, u64::MAX))));
        assert_eq!(chunk_size(b"1a"), Ok(None));
        assert_eq!(chunk_size(b"1a\r"), Ok(None));
        assert_eq!(chunk_size(b"1a;ext"), Ok(None));
        assert!(chunk_size(b"\r\n").is_err(), "no digits");
        assert!(chunk_size(b"zz\r\n").is_err());
        assert!(chunk_size(b"-1\r\n").is_err());
        assert!(chunk_size(b"1ffffffffffffffff\r\n").is_err(), "more than 64 bits");
        assert!(chunk_size(b"5\n").is_err(), "bare LF");
        assert!(chunk_size(b"5 x\r\n").is_err(), "junk after the size");
        assert!(chunk_size(b"5;a\rb\r\n").is_err(), "CR inside the extension");
        let long = [b"5;".as_slice(), &[b'a'; MAX_CHUNK_LINE]].concat();
        assert!(chunk_size(&long).is_err(), "an endless extension");
    }

    #[test]
    fn content_lengths_are_strict() {
        assert_eq!(content_length(b"0"), Ok(0));
        assert_eq!(content_length(b"5, 5"), Ok(5));
        assert!(content_length(b"5, 6").is_err());
        assert!(content_length(b"").is_err());
        assert!(content_length(b"+5").is_err());
        assert!(content_length(b"0x10").is_err());
        assert!(content_length(b"99999999999999999999").is_err());
    }

    #[test]
    fn a_head_with_its_framing() {
        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: 1\r\nSet-Cookie: a\r\nSet-Cookie: b\r\n\r\nabc").unwrap().unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.body, Decoder::Length(3));
        assert!(h.keep_alive);
        assert_eq!(map(&h)["content-length"], "3");
        assert_eq!(map(&h).get_all("set-cookie").iter().count(), 2);
        assert!(head(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap().is_none(), "incomplete");
        let h = head(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive, "HTTP/1.0 closes unless asked");
        let h = head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\n").unwrap().unwrap();
        assert!(h.keep_alive);
        assert!(!map(&h).contains_key("connection"));
        let h = head(b"HTTP/1.1 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.body, h.keep_alive), (Decoder::Eof, false), "close-delimited");
        let h = head(b"HTTP/1.1 200 OK\r\nConnection: close, x-private\r\nX-Private: 1\r\nKeep-Alive: 5\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        assert_eq!(map(&h).keys().collect::<Vec<_>>(), vec!["content-length"], "hop-by-hop and named headers go");
        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n").unwrap().unwrap();
        assert_eq!(map(&h).get_all("content-length").iter().collect::<Vec<_>>(), vec!["5"]);
    }

    #[test]
    fn interim_responses_are_skipped_and_upgrades_refused() {
        let h = head(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.status, StatusCode::CREATED);
        assert!(!map(&h).contains_key("link"));
        assert!(head(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap().is_none(), "the final response is still to come");
        assert!(head(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n").is_err());
    }

    #[test]
    fn bad_framing_is_refused() {
        for bad in [
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n".as_slice(),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: 1\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"SSH-2.0-OpenSSH_9.2\r\n",
            b"HTTP/2 200\r\n\r\n",
        ] {
            assert!(head(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        while big.len() <= MAX_HEAD {
            big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert!(head(&big[..MAX_HEAD + 10]).is_err(), "an endless head");
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(head(&many).is_err(), "too many headers");
    }

    #[test]
    fn no_body_after_head_204_and_304() {
        let mut b = inbuf(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n");
        let h = parse_head(&mut b, &mut Vec::new(), true).unwrap().unwrap();
        assert_eq!(h.body, Decoder::Length(0));
        assert_eq!(map(&h)["content-length"], "10", "the length is forwarded as metadata");
        for status in ["204 No Content", "304 Not Modified"] {
            let h = head(format!("HTTP/1.1 {status}\r\nContent-Length: 10\r\n\r\n").as_bytes()).unwrap().unwrap();
            assert_eq!(h.body, Decoder::Length(0));
        }
    }

    #[test]
    fn bodies_decode_by_their_framing() {
        let (data, d, left) = body(Decoder::Length(3), b"abcHTTP/1.1").unwrap();
        assert_eq!((data.as_slice(), d, left), (b"abc".as_slice(), Decoder::Done, 8), "what follows the body is left");
        let (data, d, _) = body(Decoder::Length(5), b"abc").unwrap();
        assert_eq!((data.as_slice(), d), (b"abc".as_slice(), Decoder::Length(2)));
        let chunked = b"3;x=y\r\nabc\r\n1\r\nd\r\n0\r\nTrailer: 1\r\n\r\n";
        let (data, d, left) = body(Decoder::Chunked(Chunk::Size), chunked).unwrap();
        assert_eq!((data.as_slice(), d, left), (b"abcd".as_slice(), Decoder::Done, 0));
        for cut in 0..chunked.len() {
            let (data, d, _) = body(Decoder::Chunked(Chunk::Size), &chunked[..cut]).unwrap();
            assert_ne!(d, Decoder::Done, "not done at {cut}");
            assert!(b"abcd".starts_with(&data));
        }
        assert!(body(Decoder::Chunked(Chunk::Size), b"3\r\nabcX\r\n").is_err(), "no CRLF after the data");
        assert!(body(Decoder::Chunked(Chunk::Size), b"3\r\nabc\r\nzz\r\n").is_err());
        assert!(body(Decoder::Chunked(Chunk::Size), b"0\r\nBad Trailer\r\n\r\n").is_err());
        let mut d = Decoder::Length(2);
        assert!(d.eof().is_err(), "truncated");
        let mut d = Decoder::Eof;
        assert!(d.eof().is_ok());
    }
}
