//! `--emit slurm`: a Slurm array job with one task per run. Pretraining runs are one array;
//! each finetuning run is a task of the same script submitted with a dependency on its
//! pretraining run's task (`afterok:<job>_<index>`). Each task runs `redpack study run STUDY
//! --out OUT --only RUN`.

use std::fmt::Write;
use std::path::Path;

use super::file::SlurmSpec;
use super::grid::RunPlan;

/// The files to write: (file name, contents, executable).
pub fn emit(
    plans: &[RunPlan],
    study_file: &Path,
    out: &Path,
    spec: &SlurmSpec,
) -> Vec<(String, String, bool)> {
    let binary = spec.binary.as_deref().unwrap_or("redpack");
    let names: String = plans.iter().map(|p| format!("{}\n", p.name)).collect();
    let mut task = String::new();
    let _ = writeln!(task, "#!/bin/bash");
    let _ = writeln!(task, "#SBATCH --job-name=redpack-study");
    let _ = writeln!(
        task,
        "#SBATCH --output={}/slurm/%x-%A_%a.log",
        out.display()
    );
    let _ = writeln!(
        task,
        "#SBATCH --gres={}",
        spec.gres.as_deref().unwrap_or("gpu:1")
    );
    let _ = writeln!(
        task,
        "#SBATCH --time={}",
        spec.time.as_deref().unwrap_or("48:00:00")
    );
    if let Some(p) = &spec.partition {
        let _ = writeln!(task, "#SBATCH --partition={p}");
    }
    if let Some(c) = spec.cpus_per_task {
        let _ = writeln!(task, "#SBATCH --cpus-per-task={c}");
    }
    let _ = writeln!(
        task,
        "# One run of the study per array task: line SLURM_ARRAY_TASK_ID + 1 of runs.txt."
    );
    let _ = writeln!(task, "set -euo pipefail");
    let _ = writeln!(
        task,
        "RUN=$(sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" '{}/slurm/runs.txt')",
        out.display()
    );
    let _ = writeln!(
        task,
        "exec {binary} study run '{}' --out '{}' --only \"$RUN\"",
        study_file.display(),
        out.display()
    );

    let pretrain: Vec<usize> = (0..plans.len())
        .filter(|&i| plans[i].is_pretrain())
        .collect();
    let mut submit = String::new();
    let _ = writeln!(submit, "#!/bin/bash");
    let _ = writeln!(submit, "# Submits the study: the pretraining runs as one array job, then each finetuning run as a task");
    let _ = writeln!(submit, "# that waits for its pretraining run's task. When all are done: {binary} study report '{}'", out.display());
    let _ = writeln!(submit, "set -euo pipefail");
    let _ = writeln!(submit, "cd \"$(dirname \"$0\")\"");
    let script = "study.sbatch";
    if pretrain.is_empty() {
        let _ = writeln!(submit, "PRE=");
    } else {
        let _ = writeln!(
            submit,
            "PRE=$(sbatch --parsable --array={} {script})",
            ranges(&pretrain)
        );
        let _ = writeln!(
            submit,
            "echo \"pretraining: job $PRE ({} tasks)\"",
            pretrain.len()
        );
    }
    for (i, plan) in plans.iter().enumerate() {
        let Some(from) = &plan.init_from else {
            continue;
        };
        let Some(j) = plans.iter().position(|p| &p.name == from) else {
            continue;
        };
        let _ = writeln!(
            submit,
            "sbatch --parsable --array={i} --dependency=afterok:${{PRE}}_{j} {script}  # {} after {}",
            plan.name, from
        );
    }
    vec![
        ("runs.txt".into(), names, false),
        (script.into(), task, true),
        ("submit.sh".into(), submit, true),
    ]
}

/// `0-3,5,7-8`.
fn ranges(indices: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < indices.len() {
        let start = indices[i];
        let mut end = start;
        while i + 1 < indices.len() && indices[i + 1] == end + 1 {
            i += 1;
            end = indices[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}
