//! Downstream tasks on their fixtures (`tests/fixtures/eval-tasks/`, each task's published layout;
//! `answers.json` there is the gold answer of every evaluated example, keyed by a substring
//! unique to it): the readers and templates give the prompts written out by hand below; few-shot
//! draws are seeded, from the pool, never the evaluated example; a model that always answers
//! the gold choice or text scores 100% on every task, and one that always answers the first
//! choice (or a fixed text) the fraction counted by hand from the fixtures; answer extraction
//! and ChrF give hand-computed values, and ChrF equals sacreBLEU's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use arrow_array::{RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use redpack_trainer::lm::{GenerateRequest, LanguageModel, LmError, Loglik, LoglikRequest};
use redpack_trainer::tasks::{
    chrf, evaluate, fewshot, records, scoring, Codec, Extract, Report, Settings, Shots, Target,
    TaskData, TaskError, TaskId, TaskReport,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/eval-tasks")
}

fn load(task: TaskId) -> TaskData {
    task.load(&fixtures())
        .unwrap_or_else(|e| panic!("{}: {e}", task.name()))
}

/// One byte per token: text round-trips exactly, in every script.
struct Bytes;

impl Codec for Bytes {
    fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        Ok(text.bytes().map(u32::from).collect())
    }
    fn decode(&self, ids: &[u32]) -> Result<String, String> {
        let bytes: Vec<u8> = ids.iter().map(|&id| id as u8).collect();
        String::from_utf8(bytes).map_err(|e| e.to_string())
    }
}

fn text(ids: &[u32]) -> String {
    Bytes.decode(ids).unwrap()
}

/// The gold answers of the fixtures' evaluated examples: `[task, key, answer]`.
fn answers(task: TaskId) -> Vec<(String, String)> {
    let raw = std::fs::read_to_string(fixtures().join("answers.json")).unwrap();
    let all: Vec<(String, String, String)> = serde_json::from_str(&raw).unwrap();
    all.into_iter()
        .filter(|(t, _, _)| t == task.name())
        .map(|(_, key, answer)| (key, answer))
        .collect()
}

/// Knows each evaluated example's answer: finds the example by the key that occurs last in the
/// prompt (the evaluated query comes after the demonstrations) and gives the gold choice
/// log-probability 0 and the others -5, or generates the gold text.
struct Oracle {
    answers: Vec<(String, String)>,
    max_len: usize,
}

impl Oracle {
    fn answer(&self, prompt: &str) -> &str {
        self.answers
            .iter()
            .filter_map(|(key, answer)| prompt.rfind(key.as_str()).map(|at| (at, answer)))
            .max_by_key(|(at, _)| *at)
            .map(|(_, answer)| answer.as_str())
            .unwrap_or_else(|| panic!("no known example in the prompt:\n{prompt}"))
    }
}

impl LanguageModel for Oracle {
    fn describe(&self) -> String {
        "oracle".to_owned()
    }
    fn max_len(&self) -> usize {
        self.max_len
    }
    fn eod_id(&self) -> u32 {
        0
    }
    fn loglikelihood(&mut self, requests: &[LoglikRequest]) -> Result<Vec<Loglik>, LmError> {
        Ok(requests
            .iter()
            .map(|r| {
                let gold = self.answer(&text(&r.context)).trim();
                Loglik {
                    logprob: if text(&r.continuation).trim() == gold {
                        0.0
                    } else {
                        -5.0
                    },
                    greedy: false,
                    truncated: 0,
                }
            })
            .collect())
    }
    fn generate_greedy(&mut self, requests: &[GenerateRequest]) -> Result<Vec<Vec<u32>>, LmError> {
        Ok(requests
            .iter()
            .map(|r| Bytes.encode(self.answer(&text(&r.prompt))).unwrap())
            .collect())
    }
}

/// Gives every continuation the same log-probability (so the first choice wins every tie) and
/// always generates `output`; records the requests it saw.
struct Constant {
    output: String,
    max_len: usize,
    prompts: Vec<Vec<u32>>,
}

impl Constant {
    fn new(output: &str) -> Constant {
        Constant {
            output: output.to_owned(),
            max_len: 1 << 20,
            prompts: Vec::new(),
        }
    }
}

impl LanguageModel for Constant {
    fn describe(&self) -> String {
        "constant".to_owned()
    }
    fn max_len(&self) -> usize {
        self.max_len
    }
    fn eod_id(&self) -> u32 {
        0
    }
    fn loglikelihood(&mut self, requests: &[LoglikRequest]) -> Result<Vec<Loglik>, LmError> {
        Ok(requests
            .iter()
            .map(|_| Loglik {
                logprob: 0.0,
                greedy: false,
                truncated: 0,
            })
            .collect())
    }
    fn generate_greedy(&mut self, requests: &[GenerateRequest]) -> Result<Vec<Vec<u32>>, LmError> {
        self.prompts
            .extend(requests.iter().map(|r| r.prompt.clone()));
        Ok(requests
            .iter()
            .map(|_| Bytes.encode(&self.output).unwrap())
            .collect())
    }
}

fn settings(shots: Shots) -> Settings {
    Settings {
        shots,
        limit: None,
        seed: 1234,
        batch: 4,
    }
}

fn run(task: TaskId, model: &mut dyn LanguageModel, shots: Shots) -> TaskReport {
    evaluate(&load(task), model, &Bytes, &settings(shots))
        .unwrap_or_else(|e| panic!("{}: {e}", task.name()))
}

fn zero_shot_prompt(task: TaskId, index: usize) -> String {
    fewshot::prompt(&load(task), index, 0, 0).unwrap()
}

#[test]
fn every_task_reads_its_fixture_with_the_published_columns() {
    let counts = [
        (TaskId::BoolQ, 3, 6),
        (TaskId::HellaSwag, 3, 6),
        (TaskId::Rte, 3, 6),
        (TaskId::ArcEasy, 2, 6),
        (TaskId::ArcChallenge, 3, 6),
        (TaskId::AnliR1, 3, 6),
        (TaskId::AnliR2, 2, 6),
        (TaskId::AnliR3, 2, 6),
        (TaskId::CommonsenseQa, 3, 8),
        (TaskId::StrategyQa, 3, 7),
        (TaskId::TriviaQa, 3, 6),
        (TaskId::UnifiedQa, 3, 12),
        (TaskId::Mmlu, 3, 10),
        (TaskId::Gsm8k, 3, 8),
        (TaskId::Bbh, 8, 8),
        (TaskId::WmtEnDe, 3, 5),
        (TaskId::WmtEnZh, 7, 7),
    ];
    assert_eq!(counts.len(), TaskId::ALL.len());
    for (task, eval, pool) in counts {
        let data = load(task);
        assert_eq!(data.eval.len(), eval, "{} evaluated examples", task.name());
        assert_eq!(data.pool.len(), pool, "{} demonstration pool", task.name());
        assert_eq!(answers(task).len(), eval, "{} answers.json", task.name());
    }
    let boolq = load(TaskId::BoolQ);
    assert_eq!(
        boolq.eval[1].id,
        "boolq/data/validation-00000-of-00001.parquet:2"
    );
}

#[test]
fn templates_give_the_prompts_written_out_by_hand() {
    let cases = [
        (
            TaskId::BoolQ,
            0,
            "Botanically, a tomato is the fruit of the tomato plant.\nQuestion: is a tomato a fruit?\nAnswer:",
        ),
        (
            TaskId::StrategyQa,
            0,
            "Question: Could an elephant ride a bicycle?\nAnswer:",
        ),
        (
            TaskId::Rte,
            1,
            "Anna lives in Rome.\nQuestion: Anna lives in Paris. True or False?\nAnswer:",
        ),
        (
            TaskId::AnliR1,
            2,
            "Omar plays the violin.\nQuestion: Omar cannot play any instrument. True, False, or Neither?\nAnswer:",
        ),
        // " [title]" becomes ". ", tags are dropped, double spaces collapse, ctx_b is capitalized.
        (
            TaskId::HellaSwag,
            0,
            "Home and Garden: How to water plants.. Fill a can. You",
        ),
        (
            TaskId::HellaSwag,
            1,
            "Skiing: A skier stands at the top of a slope. The skier",
        ),
        (
            TaskId::ArcChallenge,
            0,
            "Question: Which property of a mineral is found by scratching it?\nAnswer:",
        ),
        (
            TaskId::CommonsenseQa,
            0,
            "Question: Where do you put milk to keep it cold?\nA. oven\nB. refrigerator\nC. garden\nD. roof\nE. car\nAnswer:",
        ),
        (
            TaskId::TriviaQa,
            0,
            "Question: Who wrote the play Hamlet?\nAnswer:",
        ),
        (
            TaskId::UnifiedQa,
            0,
            "which animal has feathers?\n(a) a cat (b) a robin (c) a frog\nAnswer:",
        ),
        (
            TaskId::Mmlu,
            0,
            "Q: What is the closest star to Earth?\n(A) Sirius (B) the Sun (C) Vega (D) Polaris\nA: Let's think step by step.",
        ),
        (
            TaskId::Gsm8k,
            0,
            "Question: A box holds 6 eggs. How many eggs are in 3 boxes?\nAnswer:",
        ),
        (
            TaskId::Bbh,
            0,
            "Q: not ( True ) and ( True ) is\nA: Let's think step by step.",
        ),
        (
            TaskId::WmtEnDe,
            0,
            "Translate English to German.\nEnglish: The weather is nice today.\nGerman:",
        ),
        (
            TaskId::WmtEnZh,
            1,
            "Translate English to Chinese.\nEnglish: The tea is hot.\nChinese:",
        ),
    ];
    for (task, index, expected) in cases {
        assert_eq!(zero_shot_prompt(task, index), expected, "{}", task.name());
    }
}

#[test]
fn targets_map_the_published_labels_to_the_right_choice() {
    let gold = |task: TaskId, index: usize| match &load(task).eval[index].target {
        Target::Choice { choices, gold } => choices[*gold].clone(),
        other => panic!("{other:?}"),
    };
    // BoolQ answer true -> " yes"; RTE label 1 = not entailment -> " False"; ANLI label 2 =
    // contradiction -> " False"; ARC answerKey "1" -> the first text; HellaSwag label "1".
    assert_eq!(gold(TaskId::BoolQ, 0), " yes");
    assert_eq!(gold(TaskId::Rte, 1), " False");
    assert_eq!(gold(TaskId::AnliR1, 1), " Neither");
    assert_eq!(gold(TaskId::AnliR1, 2), " False");
    assert_eq!(gold(TaskId::ArcChallenge, 0), " hardness");
    assert_eq!(gold(TaskId::ArcEasy, 1), " Earth's rotation");
    assert_eq!(gold(TaskId::HellaSwag, 1), " pushes off and glides down.");
    // The harness keeps the space left where a tag was removed from an ending.
    assert_eq!(gold(TaskId::HellaSwag, 0), "  pour water on the soil.");
    assert_eq!(gold(TaskId::CommonsenseQa, 2), " D");
    let answers = |task: TaskId, index: usize| match &load(task).eval[index].target {
        Target::Answer { answers } => answers.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(answers(TaskId::Gsm8k, 1), ["2400"]);
    assert_eq!(answers(TaskId::Mmlu, 2), ["C"]);
    assert_eq!(answers(TaskId::Bbh, 4), ["(A)"]);
    assert_eq!(
        answers(TaskId::TriviaQa, 0),
        ["William Shakespeare", "William Shakespeare", "Shakespeare"]
    );
    assert_eq!(answers(TaskId::UnifiedQa, 1), ["water"]);
}

#[test]
fn demonstrations_are_seeded_distinct_and_from_the_pool() {
    let data = load(TaskId::BoolQ);
    let first = fewshot::prompt(&data, 0, 5, 7).unwrap();
    assert_eq!(
        first,
        fewshot::prompt(&data, 0, 5, 7).unwrap(),
        "deterministic"
    );
    assert_ne!(first, fewshot::prompt(&data, 0, 5, 8).unwrap(), "seeded");
    let parts: Vec<&str> = first.split(fewshot::DELIMITER).collect();
    assert_eq!(parts.len(), 6);
    assert_eq!(parts[5], data.eval[0].query);
    let pool: Vec<String> = data
        .pool
        .iter()
        .map(|e| format!("{}{}", e.query, e.demo))
        .collect();
    for part in &parts[..5] {
        assert!(
            pool.iter().any(|p| p == part),
            "not a train example: {part}"
        );
        assert_eq!(parts.iter().filter(|p| *p == part).count(), 1, "repeated");
    }
    // BoolQ demonstrations end in the gold answer: the passage about water is a " yes".
    let water = "Water is a liquid that makes things wet.\nQuestion: is water wet?\nAnswer: yes";
    assert!(pool.iter().any(|p| p == water));

    // WMT En-Zh draws from its evaluated split: never the sentence under evaluation.
    let zh = load(TaskId::WmtEnZh);
    for (i, example) in zh.eval.iter().enumerate() {
        let prompt = fewshot::prompt(&zh, i, 5, 3).unwrap();
        assert_eq!(
            prompt.matches(example.query.as_str()).count(),
            1,
            "{prompt}"
        );
        assert_eq!(prompt.split(fewshot::DELIMITER).count(), 6);
    }

    // MMLU draws from the example's own subject.
    let mmlu = load(TaskId::Mmlu);
    let prompt = fewshot::prompt(&mmlu, 2, 5, 3).unwrap();
    assert_eq!(prompt.matches("Virology practice question").count(), 5);
    assert!(!prompt.contains("Astronomy"));
    assert!(prompt.contains("A: Let's think step by step. The answer is ("));

    // BBH with 3 shots uses the published chain-of-thought prompt where there is one, else
    // three other examples of the subtask.
    let bbh = load(TaskId::Bbh);
    let with_file = fewshot::prompt(&bbh, 0, 3, 3).unwrap();
    assert!(
        with_file.starts_with("Q: not True is\nA: Let's think step by step.\nnot True = False.")
    );
    assert!(
        with_file.ends_with("\n\nQ: not ( True ) and ( True ) is\nA: Let's think step by step.")
    );
    assert!(!with_file.contains("-----"));
    let drawn = fewshot::prompt(&bbh, 4, 3, 3).unwrap();
    assert_eq!(drawn.matches("What is the date tomorrow?").count(), 4);
    assert_eq!(drawn.matches("So the answer is (A).").count(), 3);
    assert!(!drawn.contains("Boolean") && !drawn.contains("True"));

    // Too few candidates is an error naming the example and the counts.
    let error = fewshot::prompt(&load(TaskId::CommonsenseQa), 0, 9, 0).unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("needs 9 demonstrations") && message.contains("has 8 other examples"),
        "{message}"
    );
}

#[test]
fn the_oracle_scores_every_task_perfectly_at_the_paper_shot_counts() {
    let mut reports = Vec::new();
    for &task in TaskId::ALL {
        let mut oracle = Oracle {
            answers: answers(task),
            max_len: 1 << 20,
        };
        let report = run(task, &mut oracle, Shots::Paper);
        assert_eq!(report.shots, task.paper_shots());
        assert_eq!(report.score, 100.0, "{}: {report:?}", task.name());
        if let Some(norm) = report.acc_norm {
            assert_eq!(norm, 1.0, "{}", task.name());
        }
        assert_eq!(report.truncated, 0);
        reports.push(report);
    }
    let report = Report::new("oracle".to_owned(), 1234, reports);
    assert_eq!(report.average, 100.0);
    assert_eq!(report.examples, 57);
    assert_eq!(
        report.tasks.iter().map(|t| t.groups).collect::<Vec<_>>(),
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 1, 2, 1, 1]
    );
}

#[test]
fn always_the_first_choice_scores_the_fraction_of_first_golds() {
    // Golds counted in make_fixtures.py's rows: the number of examples whose answer is the
    // first choice, over the examples.
    let expected = [
        (TaskId::BoolQ, 1.0 / 3.0),
        (TaskId::StrategyQa, 2.0 / 3.0),
        (TaskId::Rte, 2.0 / 3.0),
        (TaskId::AnliR1, 1.0 / 3.0),
        (TaskId::AnliR2, 1.0 / 2.0),
        (TaskId::AnliR3, 1.0 / 2.0),
        (TaskId::HellaSwag, 1.0 / 3.0),
        (TaskId::ArcEasy, 1.0 / 2.0),
        (TaskId::ArcChallenge, 1.0 / 3.0),
        (TaskId::CommonsenseQa, 1.0 / 3.0),
    ];
    for (task, fraction) in expected {
        for shots in [Shots::Fixed(0), Shots::Paper] {
            let report = run(task, &mut Constant::new(""), shots);
            assert_eq!(report.scoring, "multiple_choice");
            assert_eq!(report.acc, Some(fraction), "{} acc", task.name());
            assert_eq!(report.acc_norm, Some(fraction), "{} acc_norm", task.name());
        }
    }
}

#[test]
fn a_fixed_generation_scores_the_examples_it_happens_to_answer() {
    let cases = [
        // "Mars" is an alias of the second question's answer; the output stops at ".".
        (TaskId::TriviaQa, "Mars. Or Venus", 1.0 / 3.0),
        (TaskId::UnifiedQa, "Water\nmore", 1.0 / 3.0),
        // The number after ####; 6 is the third problem's answer.
        (TaskId::Gsm8k, "I think 5.\n#### 6", 1.0 / 3.0),
        (TaskId::Mmlu, "The moon. So the answer is (A).", 1.0 / 3.0),
        // Two of eight BBH targets are "False".
        (TaskId::Bbh, "So the answer is False.\n\nQ: more", 2.0 / 8.0),
    ];
    for (task, output, fraction) in cases {
        let report = run(task, &mut Constant::new(output), Shots::Fixed(0));
        assert_eq!(report.scoring, "generate");
        assert_eq!(report.exact_match, Some(fraction), "{}", task.name());
    }
}

#[test]
fn translation_is_scored_by_corpus_chrf() {
    let oracle = &mut Oracle {
        answers: answers(TaskId::WmtEnDe),
        max_len: 1 << 20,
    };
    assert_eq!(run(TaskId::WmtEnDe, oracle, Shots::Paper).chrf, Some(100.0));
    // One line is decoded: the text after the newline is not part of the hypothesis.
    let report = run(
        TaskId::WmtEnDe,
        &mut Constant::new(" Das Haus ist klein.\nmore"),
        Shots::Fixed(0),
    );
    let references = [
        "Das Wetter ist heute schön.",
        "Mein Bruder liest ein Buch.",
        "Wir gehen nach Hause.",
    ]
    .map(String::from);
    let hypotheses = ["Das Haus ist klein."; 3].map(String::from);
    assert_eq!(report.chrf, Some(chrf::corpus(&hypotheses, &references)));
    assert!(report.score > 0.0 && report.score < 100.0);
}

#[test]
fn scores_do_not_depend_on_the_batch_and_limit_takes_the_first_examples() {
    for &task in TaskId::ALL {
        let data = load(task);
        let mut reports = Vec::new();
        for batch in [1, 3, 100] {
            let settings = Settings {
                batch,
                ..settings(Shots::Paper)
            };
            let mut oracle = Oracle {
                answers: answers(task),
                max_len: 1 << 20,
            };
            reports.push(evaluate(&data, &mut oracle, &Bytes, &settings).unwrap());
        }
        assert!(reports.windows(2).all(|w| w[0] == w[1]), "{}", task.name());
    }
    let settings = Settings {
        limit: Some(2),
        ..settings(Shots::Fixed(0))
    };
    let report = evaluate(
        &load(TaskId::BoolQ),
        &mut Constant::new(""),
        &Bytes,
        &settings,
    )
    .unwrap();
    assert_eq!(report.examples, 2);
    assert_eq!(report.acc, Some(0.5));
}

#[test]
fn long_prompts_keep_their_last_tokens_and_are_counted() {
    let mut model = Constant::new("#### 18");
    model.max_len = 64;
    let report = run(TaskId::Gsm8k, &mut model, Shots::Paper);
    assert_eq!(report.truncated, 3);
    for prompt in &model.prompts {
        // 64 positions, 32 of them left for the answer.
        assert_eq!(prompt.len(), 32);
        assert!(text(prompt).ends_with("\nAnswer:"));
    }
    assert_eq!(report.exact_match, Some(1.0 / 3.0));
}

#[test]
fn answers_are_extracted_as_each_task_reads_them() {
    use scoring::{extract, is_correct};
    let gsm = |output: &str| extract(Extract::Gsm8k, output);
    assert_eq!(gsm("so 3 + 4 = 7\n#### 7").as_deref(), Some("7"));
    assert_eq!(gsm("#### $1,234.").as_deref(), Some("1234"));
    assert_eq!(gsm("it is -5 degrees, then 12").as_deref(), Some("12"));
    assert_eq!(gsm("a loss of -5").as_deref(), Some("-5"));
    assert_eq!(gsm("3.5 cups").as_deref(), Some("3.5"));
    assert_eq!(gsm("no number"), None);
    assert!(is_correct(Extract::Gsm8k, Some("6.00"), &["6".to_owned()]));
    assert!(!is_correct(Extract::Gsm8k, Some("60"), &["6".to_owned()]));

    let cot = |output: &str| extract(Extract::AnswerIs, output);
    assert_eq!(
        cot("Step one. So the answer is (B).").as_deref(),
        Some("(B)")
    );
    assert_eq!(
        cot("The answer is True. Then more.").as_deref(),
        Some("True")
    );
    assert_eq!(
        cot("the answer is 4. Wait, the answer is 5.").as_deref(),
        Some("5")
    );
    assert_eq!(cot("no conclusion"), None);
    assert!(is_correct(
        Extract::AnswerIs,
        Some("B"),
        &["(B)".to_owned()]
    ));
    assert!(is_correct(
        Extract::AnswerIs,
        Some("(b)"),
        &["(B)".to_owned()]
    ));
    assert!(is_correct(
        Extract::AnswerIs,
        Some("valid"),
        &["Valid".to_owned()]
    ));
    assert!(is_correct(
        Extract::AnswerIs,
        Some(") ]"),
        &[") ]".to_owned()]
    ));
    assert!(!is_correct(
        Extract::AnswerIs,
        Some("(C)"),
        &["(B)".to_owned()]
    ));

    assert_eq!(scoring::normalize_answer(" The  Blue-Whale! "), "bluewhale");
    assert_eq!(scoring::normalize_answer("an apple a day"), "apple day");
    assert!(!is_correct(Extract::Short, Some(""), &["The".to_owned()]));
    assert_eq!(
        scoring::cut_at_stops("Paris, France.", &["\n", ".", ","]),
        "Paris"
    );

    // acc takes the highest sum, acc_norm the highest sum per character; ties go first.
    let choices = [" a".to_owned(), " longer".to_owned()];
    assert_eq!(scoring::choose(&[-2.0, -3.0], &choices), (0, 1));
    assert_eq!(scoring::choose(&[-1.0, -1.0], &choices), (0, 1));
    assert_eq!(scoring::choose(&[0.0, 0.0], &choices), (0, 0));
}

#[test]
fn chrf_gives_hand_computed_values() {
    assert_eq!(chrf::sentence("abc", "abc"), 100.0);
    assert_eq!(chrf::sentence("xyz", "abc"), 0.0);
    // "abc" against "abd": unigrams 2/3, bigrams 1/2, trigrams 0 (precision = recall); orders
    // 4-6 have no n-grams and are left out: P = R = (2/3 + 1/2 + 0) / 3 = 7/18, F = P.
    let value = chrf::sentence("a b c", "abd");
    assert!((value - 100.0 * 7.0 / 18.0).abs() < 1e-12, "{value}");
    // "ab" against "abab": unigrams 2/2 and 2/4, bigrams 1/1 and 1/3: P = 1, R = 5/12,
    // F = 5PR / (4P + R) = (25/12) / (53/12) = 25/53.
    let value = chrf::sentence("ab", "abab");
    assert!((value - 100.0 * 25.0 / 53.0).abs() < 1e-12, "{value}");
    // Orders the reference lacks count no hypothesis n-grams: "abc" against "a" is unigrams
    // alone, P = 1/3, R = 1, F = (5/3) / (4/3 + 1) = 5/7.
    let value = chrf::sentence("abc", "a");
    assert!((value - 100.0 * 5.0 / 7.0).abs() < 1e-12, "{value}");
    // Corpus statistics are summed before the score.
    let corpus = chrf::corpus(
        &["abc".to_owned(), "ab".to_owned()],
        &["abd".to_owned(), "abab".to_owned()],
    );
    // Unigrams 4/5 P, 4/7 R; bigrams 2/3 P, 2/5 R; trigrams 0/1, 0/3.
    let p = (4.0 / 5.0 + 2.0 / 3.0 + 0.0) / 3.0;
    let r = (4.0 / 7.0 + 2.0 / 5.0 + 0.0) / 3.0;
    let expected = 100.0 * 5.0 * p * r / (4.0 * p + r);
    assert!((corpus - expected).abs() < 1e-12, "{corpus} vs {expected}");
}

#[test]
fn chrf_equals_sacrebleu() {
    let hypotheses = [
        "Das Wetter ist heute schön.",
        "Mein Bruder liest Bücher.",
        "Wir gehen jetzt nach Hause, sagte er.",
        "他是老师。",
        "",
        "abc",
    ]
    .map(String::from);
    let references = [
        "Das Wetter ist heute schön.",
        "Mein Bruder liest ein Buch.",
        "Wir gehen nach Hause.",
        "他是一名老师。",
        "Leer.",
        "a",
    ]
    .map(String::from);
    let script = "import json, sys\n\
        import sacrebleu\n\
        data = json.load(sys.stdin)\n\
        out = {'corpus': sacrebleu.corpus_chrf(data['h'], [data['r']]).score,\n\
               'sentences': [sacrebleu.sentence_chrf(h, [r]).score for h, r in zip(data['h'], data['r'])]}\n\
        print(json.dumps(out))\n";
    let input = serde_json::json!({ "h": hypotheses, "r": references }).to_string();
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs (CI installs tests/python/requirements.txt)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "sacrebleu failed (pip install -r tests/python/requirements.txt):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let theirs: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let close = |what: &str, ours: f64, theirs: f64| {
        assert!(
            (ours - theirs).abs() < 1e-9,
            "{what}: redpack {ours} vs sacrebleu {theirs}"
        );
    };
    close(
        "corpus",
        chrf::corpus(&hypotheses, &references),
        theirs["corpus"].as_f64().unwrap(),
    );
    for (i, (h, r)) in hypotheses.iter().zip(&references).enumerate() {
        close(
            &format!("sentence {i}"),
            chrf::sentence(h, r),
            theirs["sentences"][i].as_f64().unwrap(),
        );
    }
}

#[test]
fn bad_input_is_an_error_naming_the_file_and_record() {
    let dir = tempfile::tempdir().unwrap();
    // A missing task folder names the fetch command.
    let message = TaskId::BoolQ.load(dir.path()).unwrap_err().to_string();
    assert!(
        message.contains("boolq/data/validation-*.parquet")
            && message.contains("redpack fetch --manifest data-manifests/eval-tasks.toml")
            && message.contains("--only boolq"),
        "{message}"
    );

    // A GSM8K solution without its final answer names the file and the row.
    let folder = dir.path().join("gsm8k/main");
    std::fs::create_dir_all(&folder).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("question", DataType::Utf8, false),
        Field::new("answer", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec!["q1", "q2"])),
            Arc::new(StringArray::from(vec![
                "1 + 1 = 2\n#### 2",
                "no final answer",
            ])),
        ],
    )
    .unwrap();
    for name in ["train", "test"] {
        let file =
            std::fs::File::create(folder.join(format!("{name}-00000-of-00001.parquet"))).unwrap();
        let mut writer = ArrowWriter::try_new(file, schema.clone(), None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }
    let message = TaskId::Gsm8k.load(dir.path()).unwrap_err().to_string();
    assert!(
        message.contains("gsm8k/main/test-00000-of-00001.parquet: record 2")
            && message.contains("####"),
        "{message}"
    );

    // A JSONL line that is not JSON, and a file of another format.
    let jsonl = dir.path().join("bad.jsonl");
    std::fs::write(&jsonl, "{\"a\": 1}\n{oops\n").unwrap();
    let error = records::read(&jsonl).unwrap_err();
    assert!(
        matches!(error, TaskError::Record { record: 2, .. }),
        "{error}"
    );
    let csv = dir.path().join("x.csv");
    std::fs::write(&csv, "a,b\n").unwrap();
    assert!(records::read(&csv)
        .unwrap_err()
        .to_string()
        .contains("x.csv"));
    // Not Parquet despite the name.
    let fake = dir.path().join("fake.parquet");
    std::fs::write(&fake, "not parquet").unwrap();
    let message = records::read(&fake).unwrap_err().to_string();
    assert!(
        message.contains("fake.parquet") && message.contains("Parquet"),
        "{message}"
    );

    // Task lists: names, groups, and an unknown name listing the known ones.
    assert_eq!(TaskId::parse_list("paper").unwrap(), TaskId::ALL);
    assert_eq!(
        TaskId::parse_list("anli,boolq,anli_r2").unwrap(),
        [
            TaskId::AnliR1,
            TaskId::AnliR2,
            TaskId::AnliR3,
            TaskId::BoolQ
        ]
    );
    let message = TaskId::parse_list("boolq,squad").unwrap_err().to_string();
    assert!(
        message.contains("\"squad\"") && message.contains("gsm8k"),
        "{message}"
    );
}

#[test]
fn every_fixture_file_is_where_the_manifest_puts_the_published_one() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data-manifests/eval-tasks.toml");
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(manifest).unwrap()).unwrap();
    let listed: Vec<(String, String)> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_owned(),
                f["subset"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    // Every task has files in the manifest.
    for task in TaskId::ALL {
        assert!(
            listed.iter().any(|(_, subset)| subset == task.name()),
            "{} has no files in the manifest",
            task.name()
        );
    }
    // Every fixture data file has the published path of a file of the task that reads it.
    let mut stack = vec![fixtures()];
    let mut checked = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let relative = path.strip_prefix(fixtures()).unwrap();
            let relative = relative.to_str().unwrap().replace('\\', "/");
            if !["parquet", "tsv", "txt"]
                .iter()
                .any(|ext| relative.ends_with(&format!(".{ext}")))
            {
                continue;
            }
            assert!(
                listed.iter().any(|(p, _)| *p == relative),
                "{relative} is not in data-manifests/eval-tasks.toml"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 36);
}

#[test]
fn every_manifest_url_names_the_file_its_path_stores() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data-manifests/eval-tasks.toml");
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(manifest).unwrap()).unwrap();
    let files = manifest["files"].as_array().unwrap();
    let mut paths = std::collections::BTreeSet::new();
    let mut hashed = 0;
    for file in files {
        let path = file["path"].as_str().unwrap();
        let url = file["url"].as_str().unwrap();
        assert!(paths.insert(path.to_owned()), "{path} is listed twice");
        // The file and the folder it sits in are the published ones.
        let local: Vec<&str> = path.rsplitn(3, '/').take(2).collect();
        let remote: Vec<&str> = url.rsplitn(3, '/').take(2).collect();
        assert_eq!(local, remote, "{path} is not the file {url} names");
        // Hub files come from the repository's main branch, not a generated conversion.
        if url.starts_with("https://huggingface.co/") {
            assert!(
                url.starts_with("https://huggingface.co/datasets/")
                    && url.contains("/resolve/main/"),
                "{url} is not a main-branch file of a hub dataset"
            );
        } else {
            assert!(
                url.starts_with("https://storage.googleapis.com/unifiedqa/data/")
                    || url.starts_with(
                        "https://raw.githubusercontent.com/suzgunmirac/BIG-Bench-Hard/main/cot-prompts/"
                    ),
                "{url} is from an unexpected host"
            );
        }
        if let Some(sha) = file.get("sha256") {
            let sha = sha.as_str().unwrap();
            assert!(
                sha.len() == 64
                    && sha
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{path}: sha256 {sha:?} is not 64 lowercase hex digits"
            );
            hashed += 1;
        }
    }
    assert_eq!(files.len(), 89);
    assert_eq!(hashed, 16);
}
