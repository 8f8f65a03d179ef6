//! Python bindings: `rlimpact_native.extract(data, fps)` turns replay bytes into frames.
//!
//! Decoding is boxcars' (with the CRC check on); everything after that is in [`extractor`].
//! Arrays cross into Python as little-endian bytes that numpy views without copying again.

pub mod extractor;
pub mod header;
pub mod touches;

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

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

fn f32_bytes<'py>(py: Python<'py>, values: &[f32]) -> Bound<'py, PyBytes> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    PyBytes::new(py, &bytes)
}

fn i32_bytes<'py>(py: Python<'py>, values: &[[i32; 2]]) -> Bound<'py, PyBytes> {
    let bytes: Vec<u8> = values
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    PyBytes::new(py, &bytes)
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
    dict.set_item("time", f32_bytes(py, &out.time))?;
    dict.set_item("seconds_remaining", f32_bytes(py, &out.seconds_remaining))?;
    dict.set_item("ball", f32_bytes(py, &out.ball))?;
    dict.set_item("cars", f32_bytes(py, &out.cars))?;
    dict.set_item("touches", i32_bytes(py, &out.touches))?;
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

/// Decode a replay and resample it at `fps`.
///
/// Returns a dict: `n_frames`, `n_players`; little-endian bytes `time` f32[T],
/// `seconds_remaining` f32[T], `ball` f32[T, 6], `cars` f32[T, P, 12], `touches` i32[K, 2];
/// `players` [(name, team, platform_id, is_bot)], `goals` [(time, team, scorer, source)],
/// `header_goals`, `team_size`, `network_frames`, `map_name` (or None), `mode_objects` [str].
/// Raises `DecodeError` or `ContentError`.
#[pyfunction]
fn extract<'py>(py: Python<'py>, data: &[u8], fps: f64) -> PyResult<Bound<'py, PyDict>> {
    let result = py.detach(|| catch_unwind(AssertUnwindSafe(|| extractor::extract(data, fps))));
    match result {
        Ok(Ok(out)) => to_dict(py, &out),
        Ok(Err(ExtractError::Decode(message))) => Err(DecodeError::new_err(message)),
        Ok(Err(ExtractError::Content(message))) => Err(ContentError::new_err(message)),
        Err(payload) => Err(DecodeError::new_err(format!(
            "the decoder failed on this file: {}",
            panic_message(payload.as_ref())
        ))),
    }
}

#[pymodule]
fn rlimpact_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_function(wrap_pyfunction!(extract, m)?)?;
    m.add("ReplayError", py.get_type::<ReplayError>())?;
    m.add("DecodeError", py.get_type::<DecodeError>())?;
    m.add("ContentError", py.get_type::<ContentError>())?;
    m.add("BALL_WIDTH", extractor::BALL_WIDTH)?;
    m.add("CAR_WIDTH", extractor::CAR_WIDTH)?;
    Ok(())
}
