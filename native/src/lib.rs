//! Python bindings: `rlimpact_native.extract(data, fps)` turns replay bytes into frames;
//! `rlimpact_native.decode_only(data)` only decodes them (what benchmarks compare against).
//!
//! Decoding is boxcars' (with the CRC check on); everything after that is in [`extractor`].
//! Arrays cross into Python as bytearrays of little-endian values, which numpy views (writable)
//! without copying again.

pub mod extractor;
pub mod header;
pub mod touches;

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyDict, PyList};

use crate::extractor::{ExtractError, Extracted};

create_exception!(
    rlimpact_native,
    ReplayError,
    PyException,
    "The replay cannot be turned into frames."
);
create_exception!(
    rlimpact_native,
    DecodeError,
    ReplayError,
    "boxcars could not decode the file (corrupt, truncated or unsupported)."
);
create_exception!(
    rlimpact_native,
    ContentError,
    ReplayError,
    "The file decodes but holds nothing to turn into frames."
);

/// The values' little-endian bytes, written straight into a new bytearray.
fn le_bytearray<'py, T, const N: usize>(
    py: Python<'py>,
    values: &[T],
    le_bytes: impl Fn(&T) -> [u8; N],
) -> PyResult<Bound<'py, PyByteArray>> {
    PyByteArray::new_with(py, values.len() * N, |buf| {
        for (chunk, value) in buf.chunks_exact_mut(N).zip(values) {
            chunk.copy_from_slice(&le_bytes(value));
        }
        Ok(())
    })
}

fn f32_bytes<'py>(py: Python<'py>, values: &[f32]) -> PyResult<Bound<'py, PyByteArray>> {
    le_bytearray(py, values, |v| v.to_le_bytes())
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

fn to_dict<'py>(py: Python<'py>, out: &Extracted) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("n_frames", out.n_frames)?;
    dict.set_item("n_players", out.players.len())?;
    dict.set_item("time", f32_bytes(py, &out.time)?)?;
    dict.set_item("seconds_remaining", f32_bytes(py, &out.seconds_remaining)?)?;
    dict.set_item("ball", f32_bytes(py, &out.ball)?)?;
    dict.set_item("cars", f32_bytes(py, &out.cars)?)?;
    let touches = out.touches.as_flattened();
    dict.set_item("touches", le_bytearray(py, touches, |v| v.to_le_bytes())?)?;
    let players = PyList::empty(py);
    for p in &out.players {
        players.append((&p.name, p.team, &p.platform_id, p.is_bot))?;
    }
    dict.set_item("players", players)?;
    let goals = PyList::empty(py);
    for g in &out.goals {
        goals.append((g.time, g.team, &g.scorer, g.source))?;
    }
    dict.set_item("goals", goals)?;
    dict.set_item("header_goals", out.header_goals)?;
    dict.set_item("team_size", out.team_size)?;
    dict.set_item("network_frames", out.network_frames)?;
    dict.set_item("map_name", &out.map_name)?;
    dict.set_item("mode_objects", &out.mode_objects)?;
    Ok(dict)
}

/// Runs `work` without the GIL; its errors and panics become `DecodeError` or `ContentError`.
fn without_gil<T: Send>(
    py: Python<'_>,
    work: impl FnOnce() -> Result<T, ExtractError> + Send,
) -> PyResult<T> {
    match py.detach(|| catch_unwind(AssertUnwindSafe(work))) {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(ExtractError::Decode(message))) => Err(DecodeError::new_err(message)),
        Ok(Err(ExtractError::Content(message))) => Err(ContentError::new_err(message)),
        Err(payload) => Err(DecodeError::new_err(format!(
            "the decoder failed on this file: {}",
            panic_message(payload.as_ref())
        ))),
    }
}

/// Decode a replay and resample it at `fps`.
///
/// Returns a dict: `n_frames`, `n_players`; bytearrays of little-endian `time` f32[T],
/// `seconds_remaining` f32[T], `ball` f32[T, 6], `cars` f32[T, P, 12], `touches` i32[K, 2];
/// `players` [(name, team, platform_id, is_bot)], `goals` [(time, team, scorer, source)],
/// `header_goals`, `team_size`, `network_frames`, `map_name` (or None), `mode_objects` [str].
/// Raises `DecodeError` or `ContentError`.
#[pyfunction]
fn extract<'py>(py: Python<'py>, data: &[u8], fps: f64) -> PyResult<Bound<'py, PyDict>> {
    let out = without_gil(py, || extractor::extract(data, fps))?;
    to_dict(py, &out)
}

/// Decode a replay as `extract` does (boxcars, CRC checked, network data required) and do
/// nothing else: the floor of `extract`'s cost, for benchmarks. Returns the number of network
/// frames. Raises `DecodeError`.
#[pyfunction]
fn decode_only(py: Python<'_>, data: &[u8]) -> PyResult<usize> {
    without_gil(py, || {
        let replay = extractor::decode(data)?;
        Ok(replay.network_frames.map_or(0, |n| n.frames.len()))
    })
}

#[pymodule]
fn rlimpact_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_function(wrap_pyfunction!(extract, m)?)?;
    m.add_function(wrap_pyfunction!(decode_only, m)?)?;
    m.add("ReplayError", py.get_type::<ReplayError>())?;
    m.add("DecodeError", py.get_type::<DecodeError>())?;
    m.add("ContentError", py.get_type::<ContentError>())?;
    m.add("BALL_WIDTH", extractor::BALL_WIDTH)?;
    m.add("CAR_WIDTH", extractor::CAR_WIDTH)?;
    Ok(())
}
