//! The job's steps (`lst_fn`), parsed, and compiled against a CSV header into a projection.
//!
//! Steps are the seed's (`cameo_df.rename_col`, `cameo_df.horizontal_to_vertical`,
//! `cameo_df.clone_col`, `cameo_df.write_to_s3`) and a few more (`select_col`, `drop_col`,
//! `filter_eq`, `write_to_dir`); the `cameo_df.` prefix is optional. A column may be named by
//! its current name or by any name it had before (the seed's step 2 names columns that step 1
//! has just renamed). The whole plan is checked against the header before any byte is written:
//! an unknown step or column, or a missing writer, is a [`PlanError`] naming the step and the
//! column.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("step {step} ({name}): {message}")]
    Step {
        step: usize,
        name: String,
        message: String,
    },
    #[error("step {step} ({name}): no column {column:?} in the data (columns: {known})")]
    UnknownColumn {
        step: usize,
        name: String,
        column: String,
        known: String,
    },
    #[error("lst_fn must end with a writer step (write_to_s3 or write_to_dir)")]
    NoWriter,
    #[error("{0}")]
    Job(String),
}

impl PlanError {
    /// The step and column a client should look at, as JSON.
    pub fn detail(&self) -> Value {
        match self {
            PlanError::Step { step, name, .. } => serde_json::json!({"step": step, "fn": name}),
            PlanError::UnknownColumn {
                step, name, column, ..
            } => serde_json::json!({"step": step, "fn": name, "column": column}),
            PlanError::NoWriter => serde_json::json!({"field": "lst_fn"}),
            PlanError::Job(_) => serde_json::json!({}),
        }
    }
}

/// Where the output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writer {
    S3 {
        s3_url: String,
        s3_key: String,
        directory: String,
    },
    Dir {
        directory: String,
    },
}

/// One step, as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Rename(Vec<(String, String)>),
    HorizontalToVertical {
        columns: Vec<String>,
        vertical_col: String,
        value_col: String,
        drop_empty: bool,
    },
    Clone(Vec<(String, String)>),
    Select(Vec<String>),
    Drop(Vec<String>),
    FilterEq {
        column: String,
        value: String,
    },
    Write(Writer),
}

/// The steps with the name each was given (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Steps(pub Vec<(String, Step)>);

fn text_map(
    v: &Value,
    step: usize,
    name: &str,
    field: &str,
) -> Result<Vec<(String, String)>, PlanError> {
    let err = |m: &str| PlanError::Step {
        step,
        name: name.to_owned(),
        message: m.to_owned(),
    };
    let obj = v
        .get(field)
        .and_then(Value::as_object)
        .ok_or_else(|| err(&format!("{field} must be an object of old name → new name")))?;
    obj.iter()
        .map(|(k, v)| {
            v.as_str()
                .map(|s| (k.clone(), s.to_owned()))
                .ok_or_else(|| err(&format!("{field}[{k:?}] must be a string")))
        })
        .collect()
}

fn text_list(v: &Value, step: usize, name: &str, field: &str) -> Result<Vec<String>, PlanError> {
    let err = || PlanError::Step {
        step,
        name: name.to_owned(),
        message: format!("{field} must be a non-empty list of column names"),
    };
    let list = v.get(field).and_then(Value::as_array).ok_or_else(err)?;
    if list.is_empty() {
        return Err(err());
    }
    list.iter()
        .map(|c| c.as_str().map(str::to_owned).ok_or_else(err))
        .collect()
}

fn text(
    v: &Value,
    step: usize,
    name: &str,
    field: &str,
    default: Option<&str>,
) -> Result<String, PlanError> {
    match v.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        None if default.is_some() => Ok(default.unwrap_or_default().to_owned()),
        _ => Err(PlanError::Step {
            step,
            name: name.to_owned(),
            message: format!("{field} must be a non-empty string"),
        }),
    }
}

/// The fields each step accepts (anything else is refused, so a typo is not silently ignored).
fn allowed(kind: &str) -> &'static [&'static str] {
    match kind {
        "rename_col" | "clone_col" => &["fn", "dic_mapping"],
        "horizontal_to_vertical" => &[
            "fn",
            "lst_horizontal_col",
            "vertical_col",
            "value_col",
            "drop_empty",
        ],
        "select_col" | "drop_col" => &["fn", "lst_col"],
        "filter_eq" => &["fn", "col", "value"],
        "write_to_s3" => &["fn", "s3_url", "s3_key", "directory"],
        "write_to_dir" => &["fn", "directory"],
        _ => &[],
    }
}

impl Steps {
    /// Parses `lst_fn`.
    pub fn parse(lst_fn: &Value) -> Result<Steps, PlanError> {
        let list = lst_fn
            .as_array()
            .filter(|l| !l.is_empty())
            .ok_or_else(|| PlanError::Job("lst_fn must be a non-empty list of steps".into()))?;
        let mut steps = Vec::new();
        for (i, v) in list.iter().enumerate() {
            let step = i + 1;
            let name = v
                .get("fn")
                .and_then(Value::as_str)
                .ok_or_else(|| PlanError::Step {
                    step,
                    name: "?".into(),
                    message: "every step needs \"fn\"".into(),
                })?
                .to_owned();
            let kind = name.strip_prefix("cameo_df.").unwrap_or(&name);
            let fields = allowed(kind);
            if fields.is_empty() {
                return Err(PlanError::Step {
                    step,
                    name: name.clone(),
                    message: "unknown step: use rename_col, horizontal_to_vertical, clone_col, \
                              select_col, drop_col, filter_eq, write_to_s3 or write_to_dir"
                        .into(),
                });
            }
            if let Some(obj) = v.as_object() {
                if let Some(extra) = obj.keys().find(|k| {
                    !fields.contains(&k.as_str())
                        && !k.starts_with("//")
                        && !k.starts_with("_comment")
                        && !k.starts_with("註解")
                }) {
                    return Err(PlanError::Step {
                        step,
                        name: name.clone(),
                        message: format!("unknown field {extra:?}"),
                    });
                }
            }
            let parsed = match kind {
                "rename_col" => Step::Rename(text_map(v, step, &name, "dic_mapping")?),
                "clone_col" => Step::Clone(text_map(v, step, &name, "dic_mapping")?),
                "horizontal_to_vertical" => Step::HorizontalToVertical {
                    columns: text_list(v, step, &name, "lst_horizontal_col")?,
                    vertical_col: text(v, step, &name, "vertical_col", None)?,
                    value_col: text(v, step, &name, "value_col", Some("value"))?,
                    drop_empty: match v.get("drop_empty") {
                        None => false,
                        Some(Value::Bool(b)) => *b,
                        Some(_) => {
                            return Err(PlanError::Step {
                                step,
                                name,
                                message: "drop_empty must be true or false".into(),
                            })
                        }
                    },
                },
                "select_col" => Step::Select(text_list(v, step, &name, "lst_col")?),
                "drop_col" => Step::Drop(text_list(v, step, &name, "lst_col")?),
                "filter_eq" => Step::FilterEq {
                    column: text(v, step, &name, "col", None)?,
                    value: match v.get("value") {
                        Some(Value::String(s)) => s.clone(),
                        Some(Value::Number(n)) => n.to_string(),
                        _ => {
                            return Err(PlanError::Step {
                                step,
                                name,
                                message: "value must be a string or a number".into(),
                            })
                        }
                    },
                },
                "write_to_s3" => Step::Write(Writer::S3 {
                    s3_url: text(v, step, &name, "s3_url", None)?,
                    s3_key: text(v, step, &name, "s3_key", None)?,
                    directory: text(v, step, &name, "directory", Some(""))?,
                }),
                "write_to_dir" => Step::Write(Writer::Dir {
                    directory: text(v, step, &name, "directory", Some(""))?,
                }),
                _ => unreachable!("allowed() knows only these"),
            };
            steps.push((name, parsed));
        }
        let writers = steps
            .iter()
            .filter(|(_, s)| matches!(s, Step::Write(_)))
            .count();
        match steps.last() {
            Some((_, Step::Write(_))) if writers == 1 => Ok(Steps(steps)),
            _ if writers > 1 => Err(PlanError::Job(
                "lst_fn may have only one writer step".into(),
            )),
            _ => Err(PlanError::NoWriter),
        }
    }

    pub fn writer(&self) -> &Writer {
        match self.0.last() {
            Some((_, Step::Write(w))) => w,
            _ => unreachable!("parse() ends every plan with a writer"),
        }
    }
}

/// Where an output field's text comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The input field at this index.
    Input(usize),
    /// The name of the melted column of this output row.
    Vertical,
    /// The value of the melted column of this output row.
    Value,
}

/// A column while the plan is compiled: every name it had, the current one last.
#[derive(Debug, Clone)]
struct Col {
    names: Vec<String>,
    source: Source,
}

/// The compiled plan: which fields each output row has, how input rows fan out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    /// The output header.
    pub header: Vec<String>,
    /// Where each output field comes from.
    pub fields: Vec<Source>,
    /// Melted columns: (the name written in the vertical column, input index of the value).
    /// Empty: one output row per input row.
    pub melt: Vec<(String, usize)>,
    pub drop_empty: bool,
    /// Conditions every output row must meet: (source, value).
    pub filters: Vec<(Source, String)>,
}

impl Steps {
    /// Checks every step against `header` and compiles the plan.
    pub fn compile(&self, header: &[String]) -> Result<Compiled, PlanError> {
        let mut cols: Vec<Col> = header
            .iter()
            .enumerate()
            .map(|(i, h)| Col {
                names: vec![h.clone()],
                source: Source::Input(i),
            })
            .collect();
        let mut melt = Vec::new();
        let mut drop_empty = false;
        let mut filters = Vec::new();
        for (i, (name, step)) in self.0.iter().enumerate() {
            let step_no = i + 1;
            let find = |cols: &[Col], column: &str| -> Result<usize, PlanError> {
                // The current name wins; then the most recent earlier name.
                cols.iter()
                    .position(|c| c.names.last().map(String::as_str) == Some(column))
                    .or_else(|| {
                        cols.iter()
                            .position(|c| c.names.iter().any(|n| n == column))
                    })
                    .ok_or_else(|| PlanError::UnknownColumn {
                        step: step_no,
                        name: name.clone(),
                        column: column.to_owned(),
                        known: cols
                            .iter()
                            .filter_map(|c| c.names.last().cloned())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
            };
            let duplicate =
                |cols: &[Col], new: &str, except: Option<usize>| -> Result<(), PlanError> {
                    let clash = cols.iter().enumerate().any(|(j, c)| {
                        Some(j) != except && c.names.last().map(String::as_str) == Some(new)
                    });
                    if clash {
                        Err(PlanError::Step {
                            step: step_no,
                            name: name.clone(),
                            message: format!("a column named {new:?} exists already"),
                        })
                    } else {
                        Ok(())
                    }
                };
            match step {
                Step::Rename(map) => {
                    for (from, to) in map {
                        let at = find(&cols, from)?;
                        duplicate(&cols, to, Some(at))?;
                        cols[at].names.push(to.clone());
                    }
                }
                Step::Clone(map) => {
                    for (from, to) in map {
                        let at = find(&cols, from)?;
                        duplicate(&cols, to, None)?;
                        let source = cols[at].source;
                        cols.push(Col {
                            names: vec![to.clone()],
                            source,
                        });
                    }
                }
                Step::HorizontalToVertical {
                    columns,
                    vertical_col,
                    value_col,
                    drop_empty: drop,
                } => {
                    if !melt.is_empty() {
                        return Err(PlanError::Step {
                            step: step_no,
                            name: name.clone(),
                            message: "horizontal_to_vertical may appear once".into(),
                        });
                    }
                    let mut picked = Vec::new();
                    for column in columns {
                        let at = find(&cols, column)?;
                        let Source::Input(input) = cols[at].source else {
                            return Err(PlanError::Step {
                                step: step_no,
                                name: name.clone(),
                                message: format!("{column:?} is not a column of the input"),
                            });
                        };
                        if picked.contains(&at) {
                            return Err(PlanError::Step {
                                step: step_no,
                                name: name.clone(),
                                message: format!("{column:?} is listed twice"),
                            });
                        }
                        picked.push(at);
                        let current = cols[at].names.last().cloned().unwrap_or_default();
                        melt.push((current, input));
                    }
                    let mut kept: Vec<Col> = cols
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| !picked.contains(j))
                        .map(|(_, c)| c.clone())
                        .collect();
                    for new in [vertical_col, value_col] {
                        duplicate(&kept, new, None)?;
                    }
                    if vertical_col == value_col {
                        return Err(PlanError::Step {
                            step: step_no,
                            name: name.clone(),
                            message: "vertical_col and value_col must differ".into(),
                        });
                    }
                    kept.push(Col {
                        names: vec![vertical_col.clone()],
                        source: Source::Vertical,
                    });
                    kept.push(Col {
                        names: vec![value_col.clone()],
                        source: Source::Value,
                    });
                    cols = kept;
                    drop_empty = *drop;
                }
                Step::Select(list) => {
                    let mut picked = Vec::new();
                    for column in list {
                        picked.push(cols[find(&cols, column)?].clone());
                    }
                    cols = picked;
                }
                Step::Drop(list) => {
                    let mut doomed = Vec::new();
                    for column in list {
                        doomed.push(find(&cols, column)?);
                    }
                    cols = cols
                        .into_iter()
                        .enumerate()
                        .filter(|(j, _)| !doomed.contains(j))
                        .map(|(_, c)| c)
                        .collect();
                }
                Step::FilterEq { column, value } => {
                    let at = find(&cols, column)?;
                    filters.push((cols[at].source, value.clone()));
                }
                Step::Write(_) => {}
            }
        }
        if cols.is_empty() {
            return Err(PlanError::Job("the plan leaves no column to write".into()));
        }
        Ok(Compiled {
            header: cols
                .iter()
                .filter_map(|c| c.names.last().cloned())
                .collect(),
            fields: cols.iter().map(|c| c.source).collect(),
            melt,
            drop_empty,
            filters,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn seed_steps() -> Value {
        json!([
            {"fn": "cameo_df.rename_col", "dic_mapping": {"PM2_5(mg/m3)": "pm2_5", "HUMIDITY(%)": "humidity"}},
            {"fn": "cameo_df.horizontal_to_vertical",
             "lst_horizontal_col": ["TVOCSA()", "PM2_5(mg/m3)", "PM10(mg/m3)", "TEMPERATURE(℃)",
                                    "HUMIDITY(%)", "WIND_SPEED(m/sec)", "VOC()", "WIND_DIRECT(degrees)"],
             "vertical_col": "sensorId"},
            {"fn": "cameo_df.clone_col", "dic_mapping": {"TIME": "createTime"}},
            {"fn": "cameo_df.write_to_s3", "s3_url": "https://asdfas", "s3_key": "ASDFSDF",
             "directory": "data/out/x/"}
        ])
    }

    fn header() -> Vec<String> {
        [
            "deviceId",
            "LON",
            "LAT",
            "TIME",
            "TVOCSA()",
            "PM2_5(mg/m3)",
            "PM10(mg/m3)",
            "TEMPERATURE(℃)",
            "HUMIDITY(%)",
            "WIND_SPEED(m/sec)",
            "VOC()",
            "WIND_DIRECT(degrees)",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    #[test]
    fn the_seed_plan_compiles_with_earlier_names() {
        let steps = Steps::parse(&seed_steps()).unwrap();
        let c = steps.compile(&header()).unwrap();
        assert_eq!(
            c.header,
            [
                "deviceId",
                "LON",
                "LAT",
                "TIME",
                "sensorId",
                "value",
                "createTime"
            ]
        );
        assert_eq!(
            c.fields,
            [
                Source::Input(0),
                Source::Input(1),
                Source::Input(2),
                Source::Input(3),
                Source::Vertical,
                Source::Value,
                Source::Input(3)
            ]
        );
        // The melted names are the current ones, after step 1's rename.
        let names: Vec<&str> = c.melt.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names[1], "pm2_5");
        assert_eq!(names[4], "humidity");
        assert_eq!(c.melt[0], ("TVOCSA()".to_owned(), 4));
        assert!(
            matches!(steps.writer(), Writer::S3 { directory, .. } if directory == "data/out/x/")
        );
    }

    #[test]
    fn bad_plans_name_the_step_and_the_column() {
        let mut bad = seed_steps();
        bad[1]["lst_horizontal_col"][0] = json!("NOPE");
        let e = Steps::parse(&bad).unwrap().compile(&header()).unwrap_err();
        assert!(
            matches!(&e, PlanError::UnknownColumn { step: 2, column, .. } if column == "NOPE"),
            "{e}"
        );
        assert_eq!(e.detail()["column"], json!("NOPE"));

        let mut unknown = seed_steps();
        unknown[0]["fn"] = json!("cameo_df.pivot");
        assert!(matches!(
            Steps::parse(&unknown),
            Err(PlanError::Step { step: 1, .. })
        ));

        let no_writer = json!([{"fn": "cameo_df.rename_col", "dic_mapping": {"a": "b"}}]);
        assert_eq!(Steps::parse(&no_writer), Err(PlanError::NoWriter));

        let typo = json!([{"fn": "write_to_dir", "directry": "x"}]);
        assert!(Steps::parse(&typo).is_err());

        let clash =
            json!([{"fn": "rename_col", "dic_mapping": {"LON": "LAT"}}, {"fn": "write_to_dir"}]);
        assert!(Steps::parse(&clash).unwrap().compile(&header()).is_err());
    }

    #[test]
    fn select_drop_and_filter_compile_to_sources() {
        let steps = Steps::parse(&json!([
            {"fn": "filter_eq", "col": "deviceId", "value": 7},
            {"fn": "drop_col", "lst_col": ["LON", "LAT"]},
            {"fn": "select_col", "lst_col": ["TIME", "deviceId"]},
            {"fn": "write_to_dir", "directory": "out/"}
        ]))
        .unwrap();
        let c = steps.compile(&header()).unwrap();
        assert_eq!(c.header, ["TIME", "deviceId"]);
        assert_eq!(c.fields, [Source::Input(3), Source::Input(0)]);
        assert_eq!(c.filters, [(Source::Input(0), "7".to_owned())]);
        assert!(c.melt.is_empty());
    }
}
