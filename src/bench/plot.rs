//! `shmesh bench plot`: p50 round-trip latency against message size, as an SVG chart, from the
//! JSON lines of `shmesh bench pingpong --json`.
//!
//! - [`parse_results`] reads the lines (blank lines and lines of other benches are skipped;
//!   anything else that is not a ping-pong result is an error naming the line);
//! - [`series`] groups them by transport, touch mode and wait strategy, and takes the median
//!   p50 of each size over the runs (several runs concatenated are allowed);
//! - [`draw`] draws one line per series, both axes logarithmic, with a legend and a title
//!   naming the machine and the median `cl_ns` of the input.
//!
//! The lines are flat JSON objects ([`parse_object`] reads exactly that much JSON).
//!
//! # Examples
//!
//! ```
//! use shmesh::bench::plot::{parse_results, series};
//!
//! let text = r#"{"bench":"pingpong","transport":"shm","size":64,"wait":"spin","touch":"all","samples":2000,"cl_ns":45,"p50_ns":120,"p99_ns":200,"p999_ns":400,"max_ns":9000}
//! {"bench":"pingpong","transport":"shm","size":64,"wait":"spin","touch":"all","samples":2000,"cl_ns":50,"p50_ns":100,"p99_ns":200,"p999_ns":400,"max_ns":9000}
//! {"bench":"pingpong","transport":"shm","size":64,"wait":"spin","touch":"all","samples":2000,"cl_ns":47,"p50_ns":110,"p99_ns":200,"p999_ns":400,"max_ns":9000}"#;
//! let points = parse_results(text, "results.jsonl").unwrap();
//! let lines = series(&points);
//! assert_eq!(lines[0].label, "shm");
//! assert_eq!(lines[0].points, [(64, 110)]);
//! ```

use std::collections::BTreeMap;
use std::fmt::Display;
use std::io::Read;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::error::BenchError;
use super::median;

/// Options of `shmesh bench plot`.
#[derive(Debug, Clone, clap::Args)]
pub struct PlotArgs {
    /// The output of `shmesh bench pingpong --json`: one JSON object per line; several runs
    /// concatenated are fine. `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// The SVG file to write.
    #[arg(long, value_name = "FILE", default_value = "latency.svg")]
    pub output: PathBuf,
    /// The machine named in the title, instead of the CPU model, CPU count and kernel of the
    /// machine running the plot (use it when the results come from another machine).
    #[arg(long, value_name = "TEXT")]
    pub machine: Option<String>,
}

/// A value of a flat JSON object.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonValue {
    /// A string.
    Str(String),
    /// A number.
    Num(f64),
    /// `true` or `false`.
    Bool(bool),
    /// `null`.
    Null,
    /// An array of the values above (no nested arrays or objects): the per-reader figures of
    /// broadcast throughput rows.
    List(Vec<JsonValue>),
}

/// Parses one flat JSON object (string keys; string, number, boolean or null values, or arrays
/// of those; no other nesting), as `shmesh bench --json` prints.
///
/// # Errors
///
/// What is wrong and where (a byte offset).
///
/// # Examples
///
/// ```
/// use shmesh::bench::plot::{parse_object, JsonValue};
///
/// let o = parse_object(r#"{"transport":"shm","size":64}"#).unwrap();
/// assert_eq!(o["transport"], JsonValue::Str("shm".into()));
/// assert_eq!(o["size"], JsonValue::Num(64.0));
/// let o = parse_object(r#"{"lost":[0,3]}"#).unwrap();
/// assert_eq!(o["lost"], JsonValue::List(vec![JsonValue::Num(0.0), JsonValue::Num(3.0)]));
/// assert!(parse_object(r#"{"a":{"b":1}}"#).is_err());
/// ```
pub fn parse_object(text: &str) -> Result<BTreeMap<String, JsonValue>, String> {
    let mut p = Parser {
        bytes: text.as_bytes(),
        text,
        pos: 0,
    };
    let mut out = BTreeMap::new();
    p.ws();
    p.expect(b'{')?;
    p.ws();
    if p.peek() == Some(b'}') {
        p.pos += 1;
    } else {
        loop {
            p.ws();
            let key = p.string()?;
            p.ws();
            p.expect(b':')?;
            p.ws();
            let value = p.value()?;
            if out.insert(key.clone(), value).is_some() {
                return Err(format!("the key \"{key}\" appears twice"));
            }
            p.ws();
            match p.next() {
                Some(b',') => continue,
                Some(b'}') => break,
                _ => return Err(format!("expected ',' or '}}' at byte {}", p.pos)),
            }
        }
    }
    p.ws();
    if p.pos != p.bytes.len() {
        return Err(format!(
            "unexpected text after the object at byte {}",
            p.pos
        ));
    }
    Ok(out)
}

struct Parser<'a> {
    bytes: &'a [u8],
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek();
        if b.is_some() {
            self.pos += 1;
        }
        b
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), String> {
        if self.next() == Some(byte) {
            Ok(())
        } else {
            Err(format!(
                "expected '{}' at byte {}",
                char::from(byte),
                self.pos.saturating_sub(1)
            ))
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.expect(b'"')?;
        let mut out = String::new();
        loop {
            let start = self.pos;
            // Copy the run of plain characters (a '"' or '\\' byte is never inside a UTF-8
            // sequence, so slicing there is on a character boundary).
            while !matches!(self.peek(), Some(b'"' | b'\\') | None) {
                self.pos += 1;
            }
            out.push_str(&self.text[start..self.pos]);
            match self.next() {
                Some(b'"') => return Ok(out),
                Some(b'\\') => {
                    let escaped = match self.next() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'n') => '\n',
                        Some(b't') => '\t',
                        Some(b'r') => '\r',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'u') => {
                            let hex = self
                                .text
                                .get(self.pos..self.pos + 4)
                                .ok_or_else(|| "a cut \\u escape".to_owned())?;
                            self.pos += 4;
                            u32::from_str_radix(hex, 16)
                                .ok()
                                .and_then(char::from_u32)
                                .unwrap_or('\u{fffd}')
                        }
                        _ => return Err(format!("a bad escape at byte {}", self.pos)),
                    };
                    out.push(escaped);
                }
                _ => return Err("a string is not closed".to_owned()),
            }
        }
    }

    /// A value, or an array of values.
    fn value(&mut self) -> Result<JsonValue, String> {
        if self.peek() != Some(b'[') {
            return self.scalar();
        }
        self.pos += 1;
        let mut items = Vec::new();
        self.ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(JsonValue::List(items));
        }
        loop {
            self.ws();
            items.push(self.scalar()?);
            self.ws();
            match self.next() {
                Some(b',') => continue,
                Some(b']') => return Ok(JsonValue::List(items)),
                _ => return Err(format!("expected ',' or ']' at byte {}", self.pos)),
            }
        }
    }

    /// A string, number, boolean or null.
    fn scalar(&mut self) -> Result<JsonValue, String> {
        match self.peek() {
            Some(b'"') => self.string().map(JsonValue::Str),
            Some(b'{' | b'[') => Err(format!(
                "a nested object or array at byte {} (shmesh bench lines are flat, with arrays \
                 of plain values at most)",
                self.pos
            )),
            Some(b't') => self.word("true", JsonValue::Bool(true)),
            Some(b'f') => self.word("false", JsonValue::Bool(false)),
            Some(b'n') => self.word("null", JsonValue::Null),
            Some(_) => {
                let start = self.pos;
                while matches!(
                    self.peek(),
                    Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                ) {
                    self.pos += 1;
                }
                let number = &self.text[start..self.pos];
                number
                    .parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite())
                    .map(JsonValue::Num)
                    .ok_or_else(|| format!("expected a value at byte {start}"))
            }
            None => Err("the line ends where a value should be".to_owned()),
        }
    }

    fn word(&mut self, word: &str, value: JsonValue) -> Result<JsonValue, String> {
        if self.text[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(format!("expected a value at byte {}", self.pos))
        }
    }
}

/// One ping-pong result line, as far as the plot needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    /// The transport's name.
    pub transport: String,
    /// Message size in bytes.
    pub size: u64,
    /// `all` or `none` (`all` for lines from before `--touch` existed).
    pub touch: String,
    /// The wait strategy.
    pub wait: String,
    /// Median round trip, ns.
    pub p50_ns: u64,
    /// The cache-line round trip of the measurement, ns.
    pub cl_ns: u64,
}

/// Reads the ping-pong results among the JSON lines `text` (from the file `path`, named in
/// errors). Blank lines and the lines of other benches (`throughput`, `memcpy`, `snapshot`)
/// are skipped.
///
/// # Errors
///
/// [`BenchError::PlotInput`] for the first line that is not a JSON object with a `bench` key,
/// or a ping-pong line without a string `transport` or with a `size`, `p50_ns` or `cl_ns`
/// that is not a positive integer.
pub fn parse_results(text: &str, path: &str) -> Result<Vec<Point>, BenchError> {
    let mut points = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |detail: String| BenchError::PlotInput {
            path: path.to_owned(),
            line: i + 1,
            detail,
        };
        let object = parse_object(line).map_err(|e| bad(format!("not a JSON object: {e}")))?;
        let text_of = |key: &str| match object.get(key) {
            Some(JsonValue::Str(s)) => Ok(Some(s.clone())),
            None => Ok(None),
            Some(_) => Err(bad(format!("\"{key}\" is not a string"))),
        };
        let number_of = |key: &str| match object.get(key) {
            Some(&JsonValue::Num(n)) if n >= 1.0 && n.fract() == 0.0 && n < 9.0e15 => Ok(n as u64),
            Some(_) => Err(bad(format!("\"{key}\" is not a positive integer"))),
            None => Err(bad(format!("\"{key}\" is missing"))),
        };
        let bench = text_of("bench")?.ok_or_else(|| bad("\"bench\" is missing".into()))?;
        if bench != "pingpong" {
            continue;
        }
        points.push(Point {
            transport: text_of("transport")?
                .ok_or_else(|| bad("\"transport\" is missing".into()))?,
            size: number_of("size")?,
            touch: text_of("touch")?.unwrap_or_else(|| "all".to_owned()),
            wait: text_of("wait")?.unwrap_or_else(|| "spin".to_owned()),
            p50_ns: number_of("p50_ns")?,
            cl_ns: number_of("cl_ns")?,
        });
    }
    Ok(points)
}

/// One line of the chart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    /// The legend: the transport, with the touch mode and wait strategy when the input has
    /// more than one of them.
    pub label: String,
    /// `(size, median p50 ns)`, by increasing size.
    pub points: Vec<(u64, u64)>,
}

/// Groups `points` into one series per (transport, touch, wait), in order of first
/// appearance, each point the median p50 (the upper median of an even count) of the lines of
/// its size.
pub fn series(points: &[Point]) -> Vec<Series> {
    let distinct = |f: fn(&Point) -> &str| {
        let mut seen: Vec<&str> = points.iter().map(f).collect();
        seen.sort_unstable();
        seen.dedup();
        seen.len()
    };
    let show_touch = distinct(|p| &p.touch) > 1;
    let show_wait = distinct(|p| &p.wait) > 1;
    /// (transport, touch, wait) and the p50s of each size.
    type Group<'a> = ((&'a str, &'a str, &'a str), BTreeMap<u64, Vec<u64>>);
    let mut groups: Vec<Group<'_>> = Vec::new();
    for p in points {
        let key = (p.transport.as_str(), p.touch.as_str(), p.wait.as_str());
        let index = match groups.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                groups.push((key, BTreeMap::new()));
                groups.len() - 1
            }
        };
        groups[index].1.entry(p.size).or_default().push(p.p50_ns);
    }
    groups
        .into_iter()
        .map(|((transport, touch, wait), sizes)| {
            let mut notes = Vec::new();
            if show_touch {
                notes.push(format!("touch {touch}"));
            }
            if show_wait {
                notes.push(format!("wait {wait}"));
            }
            let label = if notes.is_empty() {
                transport.to_owned()
            } else {
                format!("{transport} ({})", notes.join(", "))
            };
            let points = sizes
                .into_iter()
                .map(|(size, mut p50s)| (size, median(&mut p50s)))
                .collect();
            Series { label, points }
        })
        .collect()
}

/// The median `cl_ns` of `points` (the upper median of an even count); 0 for none.
pub fn median_cl(points: &[Point]) -> u64 {
    let mut cl: Vec<u64> = points.iter().map(|p| p.cl_ns).collect();
    median(&mut cl)
}

/// This machine in a few words: CPU model, CPU count, kernel release (what of it Linux tells).
pub fn machine() -> String {
    let mut parts = Vec::new();
    if let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") {
        let model = cpuinfo.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == "model name").then(|| value.split_whitespace().collect::<Vec<_>>())
        });
        if let Some(words) = model {
            parts.push(words.join(" "));
        }
    }
    if let Ok(n) = std::thread::available_parallelism() {
        parts.push(format!("{n} CPUs"));
    }
    if let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        parts.push(format!("Linux {}", release.trim()));
    }
    if parts.is_empty() {
        "unknown machine".to_owned()
    } else {
        parts.join(", ")
    }
}

/// A size-axis tick (the ticks fall on powers of ten): `100 B`, `10 kB`, `1 MB`.
fn format_bytes(bytes: f64) -> String {
    if bytes >= 1e6 {
        format!("{} MB", trim(bytes / 1e6))
    } else if bytes >= 1e3 {
        format!("{} kB", trim(bytes / 1e3))
    } else {
        format!("{bytes:.0} B")
    }
}

/// `850 ns`, `8.2 µs`, `1.5 ms`.
fn format_ns(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{} µs", trim(ns / 1e3))
    } else {
        format!("{} ms", trim(ns / 1e6))
    }
}

/// One decimal below 10, none when it is 0 or above.
fn trim(x: f64) -> String {
    if x >= 10.0 || (x * 10.0).round() % 10.0 == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

/// Draws `series` into the SVG file `output`: p50 against size, both logarithmic.
///
/// # Errors
///
/// [`BenchError::PlotEmpty`] for no points; [`BenchError::PlotDraw`] when drawing or writing
/// the file fails.
pub fn draw(series: &[Series], title: &str, output: &Path) -> Result<(), BenchError> {
    let path = output.display().to_string();
    let all = series.iter().flat_map(|s| s.points.iter().copied());
    let (Some(min_x), Some(max_x), Some(min_y), Some(max_y)) = (
        all.clone().map(|p| p.0).min(),
        all.clone().map(|p| p.0).max(),
        all.clone().map(|p| p.1).min(),
        all.map(|p| p.1).max(),
    ) else {
        return Err(BenchError::PlotEmpty { path });
    };
    let fail = |e: &dyn Display| BenchError::PlotDraw {
        path: path.clone(),
        detail: e.to_string(),
    };
    // A margin around the points, so that one size or one value still spans an axis.
    let x_range = (min_x.max(1) as f64 / 1.6)..(max_x as f64 * 1.6);
    let y_range = (min_y.max(1) as f64 / 1.6)..(max_y as f64 * 1.6);
    let root = SVGBackend::new(output, (1200, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 17))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(90)
        .build_cartesian_2d(x_range.log_scale(), y_range.log_scale())
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("message size (log scale)")
        .y_desc("p50 round trip (log scale)")
        .x_label_formatter(&|x| format_bytes(*x))
        .y_label_formatter(&|y| format_ns(*y))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(|e| fail(&e))?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = s
            .points
            .iter()
            .map(|&(x, y)| (x as f64, y as f64))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| fail(&e))?
            .label(s.label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(|e| fail(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

/// The chart's title.
pub fn title(machine: &str, cl_ns: u64) -> String {
    format!(
        "shmesh bench pingpong: p50 round trip vs message size — {machine} — median cl_ns {cl_ns} ns"
    )
}

/// Runs `shmesh bench plot`.
///
/// # Errors
///
/// Reading the input, a line that is not a result ([`BenchError::PlotInput`]), no ping-pong
/// result ([`BenchError::PlotEmpty`]), or drawing ([`BenchError::PlotDraw`]).
pub fn run(args: &PlotArgs) -> Result<(), BenchError> {
    let name = args.input.display().to_string();
    let mut text = String::new();
    if args.input == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(BenchError::io("reading the results from standard input"))?;
    } else {
        text = std::fs::read_to_string(&args.input)
            .map_err(BenchError::io(format!("reading the results file {name}")))?;
    }
    let points = parse_results(&text, &name)?;
    if points.is_empty() {
        return Err(BenchError::PlotEmpty { path: name });
    }
    let machine = args.machine.clone().unwrap_or_else(machine);
    draw(
        &series(&points),
        &title(&machine, median_cl(&points)),
        &args.output,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(transport: &str, size: u64, touch: &str, p50: u64, cl: u64) -> String {
        format!(
            r#"{{"bench":"pingpong","transport":"{transport}","size":{size},"wait":"spin","touch":"{touch}","samples":100,"cl_ns":{cl},"p50_ns":{p50},"p99_ns":{},"p999_ns":{},"max_ns":{}}}"#,
            p50 * 2,
            p50 * 3,
            p50 * 4
        )
    }

    #[test]
    fn flat_objects_parse() {
        let o = parse_object(
            r#" { "a" : "x\"y\\z\u00e9" , "b":-1.5e3,"c":true,"d":false,"e":null,"f":"é"} "#,
        )
        .unwrap();
        assert_eq!(o["a"], JsonValue::Str("x\"y\\zé".into()));
        assert_eq!(o["b"], JsonValue::Num(-1500.0));
        assert_eq!(o["c"], JsonValue::Bool(true));
        assert_eq!(o["d"], JsonValue::Bool(false));
        assert_eq!(o["e"], JsonValue::Null);
        assert_eq!(o["f"], JsonValue::Str("é".into()));
        assert!(parse_object("{}").unwrap().is_empty());
        let o = parse_object(r#"{"l":[1, "x" ,null],"e":[ ]}"#).unwrap();
        assert_eq!(
            o["l"],
            JsonValue::List(vec![
                JsonValue::Num(1.0),
                JsonValue::Str("x".into()),
                JsonValue::Null
            ])
        );
        assert_eq!(o["e"], JsonValue::List(Vec::new()));
    }

    #[test]
    fn malformed_objects_are_refused() {
        for bad in [
            "",
            "[1]",
            "{",
            r#"{"a"}"#,
            r#"{"a":}"#,
            r#"{"a":1,}"#,
            r#"{"a":1 "b":2}"#,
            r#"{"a":"open}"#,
            r#"{"a":[[1]]}"#,
            r#"{"a":[{"b":1}]}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":[1}"#,
            r#"{"a":{"b":1}}"#,
            r#"{"a":1} trailing"#,
            r#"{"a":1,"a":2}"#,
            r#"{"a":tru}"#,
            r#"{"a":"\q"}"#,
            r#"{"a":1e999}"#,
            r#"{"a":"\u12"}"#,
        ] {
            assert!(parse_object(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn results_keep_pingpong_lines_and_skip_others() {
        let text = [
            line("shm", 64, "all", 100, 45),
            String::new(),
            r#"{"bench":"throughput","transport":"shm","size":64,"wait":"spin","touch":"all","cl_ns":45,"msgs_per_s":1,"bytes_per_s":64}"#.into(),
            r#"{"bench":"throughput","transport":"broadcast","size":64,"wait":"spin","touch":"all","cl_ns":45,"msgs_per_s":1,"bytes_per_s":64,"readers":2,"policy":"block","per_reader_msgs_per_s":[1,2],"min_reader_msgs_per_s":1,"lost":[0,0]}"#.into(),
            r#"{"bench":"memcpy","size":64,"bytes_per_s":1}"#.into(),
            r#"{"bench":"snapshot","transport":"memcpy","size":1048576,"cl_ns":46,"bytes_per_s":10000000000}"#.into(),
            r#"{"bench":"snapshot","transport":"region-busy","size":1048576,"cl_ns":46,"bytes_per_s":9300000000,"vs_memcpy":0.930,"interval_ns":100000,"publishes_per_s":10000,"snapshots":1792,"retries":12}"#.into(),
            // A line from before --touch: touch is "all".
            r#"{"bench":"pingpong","transport":"uds","size":8,"wait":"spin","samples":9,"cl_ns":50,"p50_ns":8000,"p99_ns":9000,"p999_ns":9000,"max_ns":9000}"#.into(),
        ]
        .join("\n");
        let points = parse_results(&text, "r.jsonl").unwrap();
        assert_eq!(
            points,
            [
                Point {
                    transport: "shm".into(),
                    size: 64,
                    touch: "all".into(),
                    wait: "spin".into(),
                    p50_ns: 100,
                    cl_ns: 45
                },
                Point {
                    transport: "uds".into(),
                    size: 8,
                    touch: "all".into(),
                    wait: "spin".into(),
                    p50_ns: 8000,
                    cl_ns: 50
                },
            ]
        );
    }

    #[test]
    fn bad_lines_name_their_line_number() {
        let good = line("shm", 64, "all", 100, 45);
        for (bad, expected) in [
            ("not json".to_owned(), "not a JSON object"),
            (r#"{"transport":"shm"}"#.to_owned(), "\"bench\" is missing"),
            (
                good.replace(r#""size":64"#, r#""size":"64""#),
                "\"size\" is not a positive integer",
            ),
            (
                good.replace(r#""p50_ns":100"#, r#""p50_ns":0"#),
                "\"p50_ns\" is not a positive integer",
            ),
            (good.replace(r#""cl_ns":45,"#, ""), "\"cl_ns\" is missing"),
            (
                good.replace(r#""transport":"shm""#, r#""transport":3"#),
                "\"transport\" is not a string",
            ),
            (
                good.replace(r#""size":64"#, r#""size":6.5"#),
                "\"size\" is not a positive integer",
            ),
        ] {
            let text = format!("{good}\n\n{bad}\n{good}");
            let err = parse_results(&text, "r.jsonl").unwrap_err().to_string();
            assert!(err.starts_with("r.jsonl, line 3: "), "{err}");
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }

    #[test]
    fn series_take_the_median_p50_per_transport_size_and_touch() {
        let lines = [
            line("shm", 64, "all", 120, 40),
            line("uds", 64, "all", 8000, 45),
            line("shm", 64, "all", 100, 50),
            line("shm", 4096, "all", 300, 45),
            line("shm", 64, "all", 110, 60),
            line("shm", 64, "none", 90, 45),
            line("shm", 4096, "none", 95, 45),
            line("uds", 64, "all", 9000, 45),
        ];
        let points = parse_results(&lines.join("\n"), "r").unwrap();
        let s = series(&points);
        assert_eq!(
            s,
            [
                Series {
                    label: "shm (touch all)".into(),
                    points: vec![(64, 110), (4096, 300)]
                },
                Series {
                    // Even count: the upper median.
                    label: "uds (touch all)".into(),
                    points: vec![(64, 9000)]
                },
                Series {
                    label: "shm (touch none)".into(),
                    points: vec![(64, 90), (4096, 95)]
                },
            ]
        );
        assert_eq!(median_cl(&points), 45);
        // One touch mode only: the labels are the transports.
        let points = parse_results(&lines[..5].join("\n"), "r").unwrap();
        let labels: Vec<String> = series(&points).into_iter().map(|s| s.label).collect();
        assert_eq!(labels, ["shm", "uds"]);
        // Several wait strategies: named too.
        let futex = line("shm", 64, "all", 130, 45).replace("\"spin\"", "\"futex\"");
        let points = parse_results(&[lines[0].clone(), futex].join("\n"), "r").unwrap();
        let labels: Vec<String> = series(&points).into_iter().map(|s| s.label).collect();
        assert_eq!(labels, ["shm (wait spin)", "shm (wait futex)"]);
    }

    #[test]
    fn the_chart_names_every_series_and_the_axes() {
        let dir = std::env::temp_dir().join(format!("shmesh-plot-test.{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("latency.svg");
        let series = [
            Series {
                label: "shm".into(),
                points: vec![(64, 110), (1 << 20, 90_000)],
            },
            Series {
                label: "ipc-channel".into(),
                points: vec![(1017, 20_000)],
            },
        ];
        draw(&series, &title("a <test> machine", 45), &out).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        for text in [
            "shm",
            "ipc-channel",
            "message size",
            "p50 round trip",
            "median cl_ns 45 ns",
            "a &lt;test&gt; machine",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
        let err = draw(&[], "t", &out).unwrap_err();
        assert!(matches!(err, BenchError::PlotEmpty { .. }), "{err}");
    }

    #[test]
    fn nanoseconds_read_well() {
        assert_eq!(format_ns(850.0), "850 ns");
        assert_eq!(format_ns(8200.0), "8.2 µs");
        assert_eq!(format_ns(15_000.0), "15 µs");
        assert_eq!(format_ns(1_500_000.0), "1.5 ms");
        assert_eq!(format_bytes(100.0), "100 B");
        assert_eq!(format_bytes(10_000.0), "10 kB");
        assert_eq!(format_bytes(1e6), "1 MB");
        assert_eq!(format_ns(1000.0), "1 µs");
    }

    #[test]
    fn the_machine_is_described() {
        assert!(!machine().is_empty());
    }
}
