//! The Adafactor update on the device, over every parameter tensor at once (adafactor.cu),
//! matching `optim::adafactor` (T5X's rule).
//!
//! A per-tensor update costs about 15 launches, most of them tiny: some 1,100 for a 150M model's
//! 73 tensors, enough to keep the GPU waiting on the host. Here each pass is one launch over the
//! work of all tensors, described by a table the host builds once (`Layout`) and uploads again
//! only when a buffer moves: 2 launches for the gradient norm and 7 for the update, whatever the
//! model. Sums run over fixed chunks and segments and are added in a fixed order, so an update is
//! deterministic.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtrMut, PushKernelArg};

use super::grid::{driver, grid, LaunchError, NULL, THREADS};
use super::launch::CudaKernels;
use crate::optim::adafactor::AdafactorConfig;

/// Values per chunk of the element-wise passes (`MT_CHUNK` in adafactor.cu).
const CHUNK: usize = 4096;
/// Rows per partial column sum of a factored moment (`MT_SEGMENT`).
const SEGMENT: usize = 512;
/// Work item kinds of `mt_moments` (`MT_FULL`, `MT_ROW`, `MT_COL`).
const FULL: u32 = 0;
const ROW: u32 = 1;
const COL: u32 = 2;
/// 64-bit words per tensor in the table (`sizeof(MtTensor) / 8`).
const WORDS: usize = 11;

/// What one update uses besides the state: the config's constants, this step's `beta2` and the
/// learning rate.
#[derive(Debug, Clone, Copy)]
pub struct AdafactorStep<'a> {
    pub config: &'a AdafactorConfig,
    pub beta2: f32,
    pub lr: f32,
}

/// The second moment of one parameter on the device.
pub enum DeviceMoment<'a> {
    Full(&'a mut CudaSlice<f32>),
    /// For a `v_row.len() x v_col.len()` matrix.
    Factored {
        v_row: &'a mut CudaSlice<f32>,
        v_col: &'a mut CudaSlice<f32>,
    },
}

/// One parameter of an update and its state.
pub struct AdafactorTensor<'a> {
    pub param: &'a mut CudaSlice<f32>,
    pub grad: &'a mut CudaSlice<f32>,
    pub moment: DeviceMoment<'a>,
    /// `Some` exactly when the config has `beta1`.
    pub momentum: Option<&'a mut CudaSlice<f32>>,
}

/// The shape of one tensor's second moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MomentShape {
    Full { n: usize },
    Factored { rows: usize, cols: usize },
}

impl MomentShape {
    fn len(self) -> usize {
        match self {
            MomentShape::Full { n } => n,
            MomentShape::Factored { rows, cols } => rows * cols,
        }
    }
}

/// How the passes split the work of a list of tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layout {
    shapes: Vec<MomentShape>,
    /// Per tensor: its first chunk and its number of chunks.
    first_chunk: Vec<u32>,
    chunks: Vec<u32>,
    /// Per chunk: its tensor.
    chunk_tensor: Vec<i32>,
    /// `mt_moments` work items, two words each: tensor | kind << 24, then an index.
    items: Vec<u32>,
    /// Per tensor: where its column partial sums start, and its row segments (0 if full).
    col_base: Vec<u64>,
    segments: Vec<u32>,
    col_partials: usize,
}

fn unsupported(what: String) -> LaunchError {
    LaunchError::Unsupported(format!("Adafactor on the device: {what}"))
}

impl Layout {
    fn new(shapes: &[MomentShape]) -> Result<Layout, LaunchError> {
        if shapes.len() >= 1 << 24 {
            return Err(unsupported(format!("{} tensors", shapes.len())));
        }
        let mut layout = Layout {
            shapes: shapes.to_vec(),
            first_chunk: Vec::with_capacity(shapes.len()),
            chunks: Vec::with_capacity(shapes.len()),
            chunk_tensor: Vec::new(),
            items: Vec::new(),
            col_base: Vec::with_capacity(shapes.len()),
            segments: Vec::with_capacity(shapes.len()),
            col_partials: 0,
        };
        let (mut cols_items, mut row_items, mut full_items) = (Vec::new(), Vec::new(), Vec::new());
        for (t, &shape) in shapes.iter().enumerate() {
            let n = shape.len();
            // The kernels index rows, columns and chunks with 32-bit integers.
            if n >= i32::MAX as usize {
                return Err(unsupported(format!("a tensor of {n} values")));
            }
            let chunks = n.div_ceil(CHUNK);
            let first = layout.chunk_tensor.len();
            if first + chunks >= i32::MAX as usize {
                return Err(unsupported(format!("{} values", first * CHUNK)));
            }
            layout.first_chunk.push(first as u32);
            layout.chunks.push(chunks as u32);
            layout
                .chunk_tensor
                .extend(std::iter::repeat_n(t as i32, chunks));
            let head = |kind: u32| t as u32 | kind << 24;
            match shape {
                MomentShape::Full { .. } => {
                    layout.col_base.push(0);
                    layout.segments.push(0);
                    full_items.extend((0..chunks as u32).flat_map(|c| [head(FULL), c]));
                }
                MomentShape::Factored { rows, cols } => {
                    let segments = rows.div_ceil(SEGMENT);
                    let col_blocks = cols.div_ceil(THREADS as usize);
                    layout.col_base.push(layout.col_partials as u64);
                    layout.segments.push(segments as u32);
                    layout.col_partials += segments * cols;
                    cols_items
                        .extend((0..(segments * col_blocks) as u32).flat_map(|i| [head(COL), i]));
                    row_items.extend((0..rows as u32).flat_map(|r| [head(ROW), r]));
                }
            }
        }
        if layout.chunk_tensor.is_empty() {
            return Err(unsupported("no parameter values to update".into()));
        }
        // The column items loop longest (SEGMENT rows per thread): they start first.
        layout.items = [cols_items, row_items, full_items].concat();
        Ok(layout)
    }

    fn total_chunks(&self) -> usize {
        self.chunk_tensor.len()
    }

    fn item_count(&self) -> usize {
        self.items.len() / 2
    }

    /// The table row of tensor `t` (`struct MtTensor`), given its buffers' addresses.
    fn words(&self, t: usize, ptrs: [u64; 6]) -> [u64; WORDS] {
        let (rows, cols) = match self.shapes[t] {
            MomentShape::Full { n } => (n, 1),
            MomentShape::Factored { rows, cols } => (rows, cols),
        };
        let pair = |lo: u64, hi: u64| lo | hi << 32;
        let [param, grad, v, v_row, v_col, momentum] = ptrs;
        [
            param,
            grad,
            v,
            v_row,
            v_col,
            momentum,
            self.shapes[t].len() as u64,
            pair(rows as u64, cols as u64),
            pair(self.first_chunk[t] as u64, self.chunks[t] as u64),
            self.col_base[t],
            self.segments[t] as u64,
        ]
    }
}

/// A multi-tensor Adafactor for one list of tensor shapes: the work table and the scratch sums.
pub struct MultiTensorAdafactor {
    layout: Layout,
    /// The table as last uploaded; uploaded again when a buffer has moved.
    uploaded: Vec<u64>,
    table: CudaSlice<u64>,
    chunk_tensor: CudaSlice<i32>,
    items: CudaSlice<u32>,
    partial_a: CudaSlice<f64>,
    partial_b: CudaSlice<f64>,
    col_partial: CudaSlice<f64>,
    v_row_sum: CudaSlice<f64>,
    y_sq: CudaSlice<f64>,
    p_sq: CudaSlice<f64>,
    /// Per tensor, after `gradient_squares`: the sum of the squared (scaled) gradient.
    pub grad_sq: CudaSlice<f64>,
    /// Per tensor, after `update`: the sum of the squared change.
    pub update_sq: CudaSlice<f64>,
}

impl MultiTensorAdafactor {
    pub fn new(stream: &Arc<CudaStream>, shapes: &[MomentShape]) -> Result<Self, LaunchError> {
        let layout = Layout::new(shapes)?;
        let f64s = |n: usize| {
            stream
                .alloc_zeros::<f64>(n.max(1))
                .map_err(driver("allocating Adafactor scratch"))
        };
        let upload = |what: &str, words: &[u32]| {
            stream
                .clone_htod(words)
                .map_err(driver(format!("uploading the Adafactor {what}")))
        };
        let chunk_tensor = stream
            .clone_htod(&layout.chunk_tensor)
            .map_err(driver("uploading the Adafactor chunks"))?;
        let tensors = shapes.len();
        Ok(MultiTensorAdafactor {
            uploaded: Vec::new(),
            table: stream
                .alloc_zeros::<u64>((tensors * WORDS).max(1))
                .map_err(driver("allocating the Adafactor table"))?,
            chunk_tensor,
            items: upload("work items", &layout.items)?,
            partial_a: f64s(layout.total_chunks())?,
            partial_b: f64s(layout.total_chunks())?,
            col_partial: f64s(layout.col_partials)?,
            v_row_sum: f64s(tensors)?,
            y_sq: f64s(tensors)?,
            p_sq: f64s(tensors)?,
            grad_sq: f64s(tensors)?,
            update_sq: f64s(tensors)?,
            layout,
        })
    }

    /// Checks `tensors` against the layout and uploads the table if any buffer moved since.
    fn bind(
        &mut self,
        stream: &Arc<CudaStream>,
        tensors: &mut [AdafactorTensor<'_>],
    ) -> Result<(), LaunchError> {
        if tensors.len() != self.layout.shapes.len() {
            return Err(LaunchError::Unsupported(format!(
                "internal: Adafactor laid out for {} tensors, given {}",
                self.layout.shapes.len(),
                tensors.len()
            )));
        }
        let mut words = Vec::with_capacity(tensors.len() * WORDS);
        for (i, t) in tensors.iter_mut().enumerate() {
            let shape = self.layout.shapes[i];
            let n = shape.len();
            let fits = t.param.len() == n
                && t.grad.len() == n
                && t.momentum.as_ref().is_none_or(|m| m.len() == n)
                && match (&t.moment, shape) {
                    (DeviceMoment::Full(v), MomentShape::Full { .. }) => v.len() == n,
                    (
                        DeviceMoment::Factored { v_row, v_col },
                        MomentShape::Factored { rows, cols },
                    ) => v_row.len() == rows && v_col.len() == cols,
                    _ => false,
                };
            if !fits {
                return Err(LaunchError::Unsupported(format!(
                    "internal: Adafactor tensor {i} does not have the laid-out shape {shape:?}"
                )));
            }
            let ptr_mut = |x: &mut CudaSlice<f32>| x.device_ptr_mut(stream).0;
            let (v, v_row, v_col) = match &mut t.moment {
                DeviceMoment::Full(v) => (ptr_mut(v), 0, 0),
                DeviceMoment::Factored { v_row, v_col } => (0, ptr_mut(v_row), ptr_mut(v_col)),
            };
            let momentum = t.momentum.as_mut().map_or(0, |m| ptr_mut(m));
            let ptrs = [ptr_mut(t.param), ptr_mut(t.grad), v, v_row, v_col, momentum];
            words.extend(self.layout.words(i, ptrs));
        }
        if words != self.uploaded {
            stream
                .memcpy_htod(&words, &mut self.table)
                .map_err(driver("uploading the Adafactor table"))?;
            self.uploaded = words;
        }
        Ok(())
    }

    /// `grad *= scale` for every tensor, and `grad_sq[t]` = the sum of its squares (f64).
    pub fn gradient_squares(
        &mut self,
        kernels: &CudaKernels,
        tensors: &mut [AdafactorTensor<'_>],
        scale: f32,
    ) -> Result<(), LaunchError> {
        self.bind(kernels.stream(), tensors)?;
        let chunks = self.layout.total_chunks() as u32;
        let mut b = kernels.builder("mt_grad_sq_partial")?;
        b.arg(&self.table)
            .arg(&self.chunk_tensor)
            .arg(&scale)
            .arg(&mut self.partial_a);
        kernels.run("mt_grad_sq_partial", &mut b, grid(chunks, 1, THREADS))?;
        self.sum_chunks(kernels, Sums::Gradient)
    }

    /// One Adafactor update of every tensor, with each gradient multiplied by `factor` (global
    /// clipping; 1 for none) as it is read. `update_sq[t]` receives the sum of the squared change.
    pub fn update(
        &mut self,
        kernels: &CudaKernels,
        step: AdafactorStep<'_>,
        tensors: &mut [AdafactorTensor<'_>],
        factor: f32,
    ) -> Result<(), LaunchError> {
        self.bind(kernels.stream(), tensors)?;
        let config = step.config;
        let (beta2, eps1) = (step.beta2, config.epsilon1);
        let chunks = self.layout.total_chunks() as u32;
        let tensor_count = self.layout.shapes.len() as u32;
        let mut b = kernels.builder("mt_moments")?;
        b.arg(&self.table)
            .arg(&self.items)
            .arg(&mut self.col_partial)
            .arg(&factor)
            .arg(&beta2)
            .arg(&eps1);
        let items = self.layout.item_count() as u32;
        kernels.run("mt_moments", &mut b, grid(items, 1, THREADS))?;
        let mut b = kernels.builder("mt_factor_sums")?;
        b.arg(&self.table)
            .arg(&self.col_partial)
            .arg(&mut self.v_row_sum)
            .arg(&beta2);
        kernels.run("mt_factor_sums", &mut b, grid(tensor_count, 1, THREADS))?;
        let mut b = kernels.builder("mt_y_sq_partial")?;
        b.arg(&self.table)
            .arg(&self.chunk_tensor)
            .arg(&self.v_row_sum)
            .arg(&factor)
            .arg(&mut self.partial_a)
            .arg(&mut self.partial_b);
        kernels.run("mt_y_sq_partial", &mut b, grid(chunks, 1, THREADS))?;
        self.sum_chunks(kernels, Sums::YAndParam)?;
        let clip = config.clipping_threshold.unwrap_or(0.0);
        let param_scale = config.multiply_by_parameter_scale as i32;
        let beta1 = config.beta1.unwrap_or(0.0);
        let mut b = kernels.builder("mt_apply")?;
        b.arg(&self.table)
            .arg(&self.chunk_tensor)
            .arg(&self.v_row_sum)
            .arg(&self.y_sq)
            .arg(&self.p_sq)
            .arg(&factor)
            .arg(&step.lr);
        b.arg(&clip)
            .arg(&config.epsilon2)
            .arg(&param_scale)
            .arg(&beta1)
            .arg(&mut self.partial_a);
        kernels.run("mt_apply", &mut b, grid(chunks, 1, THREADS))?;
        self.sum_chunks(kernels, Sums::Update)
    }

    /// Per-tensor sums of the chunk partials into the sums `which` names.
    fn sum_chunks(&mut self, kernels: &CudaKernels, which: Sums) -> Result<(), LaunchError> {
        let tensors = self.layout.shapes.len() as u32;
        let mut b = kernels.builder("mt_sum_chunks")?;
        b.arg(&self.table).arg(&self.partial_a);
        match which {
            Sums::Gradient => b.arg(&mut self.grad_sq),
            Sums::Update => b.arg(&mut self.update_sq),
            Sums::YAndParam => b.arg(&mut self.y_sq),
        };
        match which {
            Sums::YAndParam => b.arg(&self.partial_b).arg(&mut self.p_sq),
            _ => b.arg(&NULL).arg(&NULL),
        };
        kernels.run("mt_sum_chunks", &mut b, grid(tensors, 1, THREADS))
    }
}

/// Which per-tensor sums `sum_chunks` fills: of the squared gradient, of the squared y and
/// parameter, or of the squared update.
#[derive(Clone, Copy)]
enum Sums {
    Gradient,
    YAndParam,
    Update,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(head: u32) -> (usize, u32) {
        ((head & 0xff_ffff) as usize, head >> 24)
    }

    #[test]
    fn layout_covers_every_value_row_and_column_once() {
        let shapes = [
            MomentShape::Full { n: 1 },
            MomentShape::Factored {
                rows: 1030,
                cols: 300,
            },
            MomentShape::Full { n: CHUNK * 2 },
            MomentShape::Factored { rows: 3, cols: 5 },
            MomentShape::Full { n: CHUNK + 7 },
        ];
        let layout = Layout::new(&shapes).unwrap();
        // Chunks tile each tensor in order.
        for (t, shape) in shapes.iter().enumerate() {
            let first = layout.first_chunk[t] as usize;
            let chunks = layout.chunks[t] as usize;
            assert_eq!(chunks, shape.len().div_ceil(CHUNK));
            assert!(layout.chunk_tensor[first..first + chunks]
                .iter()
                .all(|&c| c == t as i32));
        }
        assert_eq!(
            layout.total_chunks(),
            layout.chunks.iter().map(|&c| c as usize).sum::<usize>()
        );
        // Moment items: each full value once, each factored row once, each (segment, column)
        // once, and the column items first.
        let mut full_seen: Vec<Vec<u32>> = shapes.iter().map(|s| vec![0; s.len()]).collect();
        let mut rows_seen: Vec<Vec<u32>> = vec![Vec::new(); shapes.len()];
        let mut cols_seen: Vec<Vec<u32>> = vec![Vec::new(); shapes.len()];
        for (t, shape) in shapes.iter().enumerate() {
            if let MomentShape::Factored { rows, cols } = *shape {
                rows_seen[t] = vec![0; rows];
                cols_seen[t] = vec![0; rows.div_ceil(SEGMENT) * cols];
            }
        }
        let mut last_kind = COL;
        for item in layout.items.chunks(2) {
            let (t, k) = kind(item[0]);
            let index = item[1] as usize;
            assert!(
                !(k == COL && last_kind != COL),
                "a column item after others"
            );
            last_kind = k;
            match (k, shapes[t]) {
                (FULL, MomentShape::Full { n }) => {
                    let end = (index * CHUNK + CHUNK).min(n);
                    for seen in &mut full_seen[t][index * CHUNK..end] {
                        *seen += 1;
                    }
                }
                (ROW, MomentShape::Factored { .. }) => rows_seen[t][index] += 1,
                (COL, MomentShape::Factored { cols, .. }) => {
                    // As mt_moments: 256 columns per item, segments major.
                    let col_blocks = cols.div_ceil(THREADS as usize);
                    let (segment, block) = (index / col_blocks, index % col_blocks);
                    for j in block * THREADS as usize..((block + 1) * THREADS as usize).min(cols) {
                        cols_seen[t][segment * cols + j] += 1;
                    }
                }
                other => panic!("item {item:?} of the wrong kind: {other:?}"),
            }
        }
        for (t, shape) in shapes.iter().enumerate() {
            match shape {
                MomentShape::Full { .. } => assert!(full_seen[t].iter().all(|&s| s == 1)),
                MomentShape::Factored { .. } => {
                    assert!(rows_seen[t].iter().all(|&s| s == 1), "rows of {t}");
                    assert!(cols_seen[t].iter().all(|&s| s == 1), "columns of {t}");
                }
            }
        }
        // Column partials: disjoint, in order, filling the buffer.
        assert_eq!(layout.col_base, vec![0, 0, 0, 3 * 300, 0]);
        assert_eq!(layout.segments, vec![0, 3, 0, 1, 0]);
        assert_eq!(layout.col_partials, 3 * 300 + 5);
    }

    #[test]
    fn table_words_follow_the_c_struct() {
        let shapes = [
            MomentShape::Full { n: 10 },
            MomentShape::Factored { rows: 600, cols: 7 },
        ];
        let layout = Layout::new(&shapes).unwrap();
        let w = layout.words(1, [1, 2, 0, 4, 5, 0]);
        assert_eq!(&w[..6], &[1, 2, 0, 4, 5, 0]);
        assert_eq!(w[6], 4200);
        // rows, cols and first_chunk, chunks: two C ints in one little-endian word each.
        assert_eq!((w[7] as u32, (w[7] >> 32) as u32), (600, 7));
        assert_eq!((w[8] as u32, (w[8] >> 32) as u32), (1, 2));
        assert_eq!((w[9], w[10]), (0, 2));
        let w = layout.words(0, [9; 6]);
        assert_eq!((w[7] as u32, (w[7] >> 32) as u32), (10, 1));
        assert_eq!((w[8] as u32, (w[8] >> 32) as u32), (0, 1));
    }

    #[test]
    fn sizes_the_kernels_cannot_index_are_refused() {
        let err = Layout::new(&[MomentShape::Full {
            n: i32::MAX as usize,
        }])
        .unwrap_err();
        assert!(err.to_string().contains("values"), "{err}");
        let err = Layout::new(&[MomentShape::Full { n: 0 }]).unwrap_err();
        assert!(err.to_string().contains("no parameter values"), "{err}");
    }
}
