//! Ball touches, detected at the full network rate.
//!
//! The rule, applied to every rigid-body update of the ball (not to the resampled frames):
//!
//! 1. **Impulse.** Between two consecutive updates of the same ball, `dt` apart (at most
//!    [`MAX_GAP_S`]), free flight changes the velocity by gravity only: `Δv = (0, 0, -650)·dt`.
//!    An update whose velocity differs from that prediction by more than [`MIN_IMPULSE`] uu/s got
//!    an impulse: a car, a wall, the floor, or a goal reset. Updates where the ball teleports
//!    (kickoff reset) or goes to sleep are skipped.
//! 2. **Reach.** The impulse is a touch only when a live car (not demolished) is within
//!    [`REACH`] uu of the ball centre (car positions extrapolated to the same instant with their
//!    velocity). That excludes bounces off the arena, which happen away from cars. The toucher
//!    is the nearest car.
//! 3. **Team cross-check.** The server replicates `TAGame.Ball_TA:HitTeamNum` when the team
//!    that last hit the ball changes. If such an update lies within [`HIT_WINDOW_S`] of an
//!    impulse, the toucher is the nearest car *of that team* (when it is within reach). A
//!    `HitTeamNum` change with no impulse near it (e.g. a soft touch that the velocity test
//!    misses) adds a touch by that team's nearest car, if within [`HIT_REACH`].
//! 4. **One contact, one touch.** A player's impulses less than [`MERGE_S`] after that player's
//!    last reported touch are the same contact (it lasts a few network frames); a dribble thus
//!    yields at most one touch per [`MERGE_S`].

pub const GRAVITY_Z: f32 = -650.0;
pub const MIN_IMPULSE: f32 = 250.0;
pub const MAX_GAP_S: f32 = 0.3;
pub const REACH: f32 = 300.0;
pub const HIT_REACH: f32 = 400.0;
pub const HIT_WINDOW_S: f32 = 0.15;
pub const MERGE_S: f32 = 0.2;
/// A ball further than this from where its last velocity would put it has been teleported.
pub const TELEPORT_UU: f32 = 400.0;

/// The nearest live car of one team: which player (by PRI serial) and how far from the ball.
#[derive(Debug, Clone, Copy)]
pub struct Nearest {
    pub pri: u32,
    pub dist: f32,
}

/// Nearest car per team (index = team number) at one instant.
pub type NearestByTeam = [Option<Nearest>; 2];

#[derive(Debug, Clone, Copy)]
pub struct Impulse {
    pub time: f32,
    pub nearest: NearestByTeam,
}

#[derive(Debug, Clone, Copy)]
pub struct HitTeamChange {
    pub time: f32,
    pub team: u8,
    pub nearest: NearestByTeam,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Touch {
    pub time: f32,
    pub pri: u32,
}

/// Previous ball update, to compute the next one's impulse.
#[derive(Debug, Clone, Copy)]
pub struct BallSample {
    pub time: f32,
    pub pos: [f32; 3],
    pub vel: [f32; 3],
}

/// Rule 1: the impulse (uu/s) the ball got between two updates, or `None` when the pair says
/// nothing about touches (too far apart, teleported, asleep).
pub fn impulse(prev: &BallSample, next: &BallSample, next_sleeping: bool) -> Option<f32> {
    let dt = next.time - prev.time;
    if next_sleeping || !(dt > 0.0 && dt <= MAX_GAP_S) {
        return None;
    }
    let mut drift2 = 0.0;
    let mut dv2 = 0.0;
    for axis in 0..3 {
        let predicted = prev.pos[axis] + prev.vel[axis] * dt;
        drift2 += (next.pos[axis] - predicted).powi(2);
        let gravity = if axis == 2 { GRAVITY_Z * dt } else { 0.0 };
        dv2 += (next.vel[axis] - prev.vel[axis] - gravity).powi(2);
    }
    if drift2.sqrt() > TELEPORT_UU {
        return None;
    }
    Some(dv2.sqrt())
}

fn closest(nearest: &NearestByTeam) -> Option<Nearest> {
    nearest
        .iter()
        .flatten()
        .copied()
        .min_by(|a, b| a.dist.total_cmp(&b.dist))
}

/// Rules 2-4: turn impulses and `HitTeamNum` changes into touches, sorted by time.
pub fn resolve(impulses: &[Impulse], hits: &[HitTeamChange]) -> Vec<Touch> {
    let mut touches: Vec<Touch> = Vec::new();
    let mut explained = vec![false; hits.len()];
    for imp in impulses {
        let Some(nearest) = closest(&imp.nearest).filter(|n| n.dist <= REACH) else {
            continue;
        };
        let mut toucher = nearest;
        for (i, hit) in hits.iter().enumerate() {
            if (hit.time - imp.time).abs() <= HIT_WINDOW_S {
                explained[i] = true;
                if let Some(of_team) = imp.nearest[hit.team as usize].filter(|n| n.dist <= REACH) {
                    toucher = of_team;
                }
            }
        }
        touches.push(Touch {
            time: imp.time,
            pri: toucher.pri,
        });
    }
    for (hit, _) in hits.iter().zip(&explained).filter(|(_, e)| !**e) {
        if let Some(of_team) = hit.nearest[hit.team as usize].filter(|n| n.dist <= HIT_REACH) {
            touches.push(Touch {
                time: hit.time,
                pri: of_team.pri,
            });
        }
    }
    touches.sort_by(|a, b| a.time.total_cmp(&b.time));
    let mut merged: Vec<Touch> = Vec::with_capacity(touches.len());
    let mut last_by_pri: Vec<(u32, f32)> = Vec::new();
    for touch in touches {
        let last = last_by_pri.iter_mut().find(|(pri, _)| *pri == touch.pri);
        match last {
            Some((_, last_time)) if touch.time - *last_time < MERGE_S => {}
            Some((_, last_time)) => {
                *last_time = touch.time;
                merged.push(touch);
            }
            None => {
                last_by_pri.push((touch.pri, touch.time));
                merged.push(touch);
            }
        }
    }
    merged
}
