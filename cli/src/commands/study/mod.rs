//! `redpack study run` and `redpack study report`: a study file's grid of runs through the
//! trainer library, and the report of their results (`redpack_trainer::study`), with the plots
//! drawn here.

mod corpus;
mod plots;
mod report;
mod run;
mod tasks;

use std::process::ExitCode;

use crate::cli::study::{StudyArgs, StudyCommand};

pub fn run(args: StudyArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        StudyCommand::Run(args) => run::run(args),
        StudyCommand::Report(args) => report::run(args),
    }
}
