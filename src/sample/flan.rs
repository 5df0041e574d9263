//! The FLAN part of the sample: the `cot_zsopt` submix as gzipped JSONL (`inputs`, `targets`,
//! `task`) and as Parquet (`inputs`, `targets`, `_task_name`, `_task_source`, `_template_type`,
//! `_template_idx`) in two row groups, as the public exports lay it out.
//!
//! The gzipped file sorts first in a directory walk (`cot_zs_opt_train…` < `cot_zsopt_data`), so
//! it holds the originals: one pair repeats inside it, two of its pairs repeat in the Parquet
//! file, and one Parquet pair repeats inside the Parquet file. Each file also has one bad record:
//! an invalid JSON line, a null `targets` cell.

use std::io::Write;
use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::text::{self, Rng};
use super::{
    write_file, PlantKind, Planted, SampleError, SampleFile, SamplePlace, SampleReport, FLAN_ROOT,
};
use crate::record::RejectReason;

const TASKS: &[&str] = &["strategyqa", "qasc", "creak", "ecqa", "esnli"];
const JSONL_EXAMPLES: usize = 100;
const PARQUET_ROWS: usize = 120;
/// Two row groups of 64 and 56 rows, so the reader's row-group streaming is exercised.
const ROW_GROUP_ROWS: usize = 64;

struct Example {
    input: String,
    target: Option<String>,
    task: &'static str,
}

/// Writes both FLAN files and records what was planted.
pub fn write(
    dir: &std::path::Path,
    rng: &mut Rng,
    report: &mut SampleReport,
) -> Result<(), SampleError> {
    let jsonl_path = format!("{FLAN_ROOT}/cot_zs_opt_train.jsonl.gz");
    let parquet_path = format!("{FLAN_ROOT}/cot_zsopt_data/part.0.parquet");
    let fresh = |rng: &mut Rng| {
        let (input, target) = text::flan_example(rng);
        Example {
            input,
            target: Some(target),
            task: rng.pick(TASKS),
        }
    };

    // Gzipped JSONL: line numbers are 1-based; the invalid line sits at line 41.
    let mut lines: Vec<String> = Vec::new();
    let mut jsonl_examples: Vec<(u64, Example)> = Vec::new();
    for i in 0..JSONL_EXAMPLES {
        if i == 40 {
            lines.push(
                "{\"inputs\": \"Question: is this line complete?\", \"targets\": ".to_owned(),
            );
            report.add_reject(RejectReason::InvalidJson);
        }
        let example = if i == 70 {
            let (line, original) = &jsonl_examples[10];
            plant(
                report,
                &jsonl_path,
                *line,
                &jsonl_path,
                lines.len() as u64 + 1,
            );
            Example {
                input: original.input.clone(),
                target: original.target.clone(),
                task: original.task,
            }
        } else {
            fresh(rng)
        };
        let record = serde_json::json!({"inputs": example.input, "targets": example.target, "task": example.task});
        lines.push(record.to_string());
        jsonl_examples.push((lines.len() as u64, example));
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let io = |source| SampleError::Io {
        path: dir.join(&jsonl_path),
        source,
    };
    for line in &lines {
        gz.write_all(line.as_bytes()).map_err(io)?;
        gz.write_all(b"\n").map_err(io)?;
    }
    let bytes = gz.finish().map_err(io)?;
    write_file(dir, &jsonl_path, &bytes, report)?;
    report.examples += JSONL_EXAMPLES as u64;
    report.files.push(SampleFile {
        path: jsonl_path.clone(),
        source: "cot_zsopt".into(),
        records: JSONL_EXAMPLES as u64,
        rejects: 1,
        truncated: false,
    });

    // Parquet: `row` is the 0-based index here; places count rows from 1 (row 8 has a null
    // target).
    let mut rows: Vec<Example> = Vec::new();
    for row in 0..PARQUET_ROWS {
        let example = match row {
            7 => Example {
                target: None,
                ..fresh(rng)
            },
            30 | 90 => {
                let (line, original) = &jsonl_examples[row / 3];
                plant(report, &jsonl_path, *line, &parquet_path, row as u64 + 1);
                Example {
                    input: original.input.clone(),
                    target: original.target.clone(),
                    task: original.task,
                }
            }
            100 => {
                plant(report, &parquet_path, 51, &parquet_path, 101);
                Example {
                    input: rows[50].input.clone(),
                    target: rows[50].target.clone(),
                    task: rows[50].task,
                }
            }
            _ => fresh(rng),
        };
        rows.push(example);
    }
    report.add_reject(RejectReason::MissingField);
    report.examples += PARQUET_ROWS as u64 - 1;
    let bytes = parquet_bytes(&rows).map_err(|message| SampleError::Parquet {
        path: dir.join(&parquet_path),
        message,
    })?;
    write_file(dir, &parquet_path, &bytes, report)?;
    report.files.push(SampleFile {
        path: parquet_path,
        source: "cot_zsopt".into(),
        records: PARQUET_ROWS as u64 - 1,
        rejects: 1,
        truncated: false,
    });
    Ok(())
}

fn plant(
    report: &mut SampleReport,
    original_file: &str,
    original_line: u64,
    copy_file: &str,
    copy_line: u64,
) {
    report.planted.push(Planted {
        kind: PlantKind::FlanPair,
        original: SamplePlace {
            file: original_file.to_owned(),
            line: original_line,
        },
        copy: SamplePlace {
            file: copy_file.to_owned(),
            line: copy_line,
        },
        jaccard: 1.0,
    });
}

/// The rows as a snappy-compressed Parquet file.
fn parquet_bytes(rows: &[Example]) -> Result<Vec<u8>, String> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("inputs", DataType::Utf8, false),
        Field::new("targets", DataType::Utf8, true),
        Field::new("_task_name", DataType::Utf8, false),
        Field::new("_task_source", DataType::Utf8, false),
        Field::new("_template_type", DataType::Utf8, false),
        Field::new("_template_idx", DataType::Int64, false),
    ]));
    let strings = |f: &dyn Fn(&Example) -> Option<&str>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<StringArray>())
    };
    let columns: Vec<ArrayRef> = vec![
        strings(&|e| Some(e.input.as_str())),
        strings(&|e| e.target.as_deref()),
        strings(&|e| Some(e.task)),
        strings(&|_| Some("CoT")),
        strings(&|_| Some("zs_opt")),
        Arc::new(Int64Array::from_iter_values(
            (0..rows.len()).map(|i| (i % 8) as i64),
        )),
    ];
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns).map_err(|e| e.to_string())?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build();
    let mut writer =
        ArrowWriter::try_new(Vec::new(), schema, Some(properties)).map_err(|e| e.to_string())?;
    writer.write(&batch).map_err(|e| e.to_string())?;
    writer.into_inner().map_err(|e| e.to_string())
}
