//! Walks boxcars' network frames, tracks the actors that matter, and resamples them at a fixed
//! rate by forward-filling the latest state at or before each sample time.
//!
//! Actors tracked, recognised by their object (archetype) name when they spawn:
//! - ball: `Archetypes.Ball.*` (soccar ball, puck, basketball, breakout ball, cube, ...), not
//!   its `BallComponent_*` helpers; a spawned ball that never moves yields to one that does;
//! - car: `Archetypes.Car.*` or a game event's `...:CarArchetype` (old versions, knockout);
//!   also any actor that gets `Engine.Pawn:PlayerReplicationInfo`, except post-game lobby cars;
//! - car components (`Archetypes.CarComponents.CarComponent_*` or `...:CarArchetype.*`):
//!   boost, jump, double jump, dodge, linked to their car by `TAGame.CarComponent_TA:Vehicle`;
//! - teams (`Archetypes.Teams.Team0/1`) and PRIs (any actor that gets
//!   `Engine.PlayerReplicationInfo:*` attributes).

use std::collections::HashMap;
use std::f32::consts::PI;

use boxcars::{Attribute, Frame, Quaternion, RemoteId, Replay, RigidBody, UniqueId};

use crate::header::{self, Header};
use crate::touches::{self, BallSample, HitTeamChange, Impulse, Nearest, NearestByTeam};

pub const BALL_WIDTH: usize = 6;
pub const CAR_WIDTH: usize = 12;
const DEMOLISHED: usize = 11;
const BOOST_MAX_RAW: f32 = 255.0;
/// Boost of a fresh car (33 %) until the server replicates another amount.
const BOOST_DEFAULT_RAW: f32 = 85.0;
/// Boost use is not replicated while it happens: an active boost component drains at this rate.
const BOOST_DRAIN_RAW_PER_S: f32 = 80.0 / 0.93;
/// Car positions are extrapolated with their velocity over at most this gap (s).
const MAX_EXTRAPOLATION_S: f32 = 0.2;
/// No match lasts this long (s): longer frame times are damaged data, not hours of frames.
const MAX_DURATION_S: f64 = 4.0 * 3600.0;
/// A score increment this close to the header's goal frame (s) is that goal.
const GOAL_MATCH_WINDOW_S: f32 = 5.0;

#[derive(Debug)]
pub enum ExtractError {
    /// boxcars could not decode the file (corrupt, truncated, unsupported).
    Decode(String),
    /// The file decodes but holds nothing to turn into frames (named rule in the message).
    Content(String),
}

pub struct Player {
    pub name: String,
    pub team: u8,
    pub platform_id: Option<String>,
    pub is_bot: bool,
}

pub struct Goal {
    pub time: f32,
    pub team: u8,
    pub scorer: Option<String>,
    /// "score" (the team's score increment) or "header" (the header's goal frame).
    pub source: &'static str,
}

pub struct Extracted {
    pub n_frames: usize,
    pub time: Vec<f32>,
    pub seconds_remaining: Vec<f32>,
    pub ball: Vec<f32>,
    pub cars: Vec<f32>,
    pub players: Vec<Player>,
    pub goals: Vec<Goal>,
    pub header_goals: usize,
    /// (sampled frame index, player index), sorted by frame.
    pub touches: Vec<[i32; 2]>,
    pub team_size: Option<i32>,
    pub network_frames: usize,
    pub map_name: Option<String>,
    /// The replay's ball, game event and mutator archetypes (what says the game mode).
    pub mode_objects: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Comp {
    Boost = 0,
    Jump = 1,
    DoubleJump = 2,
    Dodge = 3,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Ball,
    Car,
    LobbyCar,
    Team(u8),
    Component(Option<Comp>),
    Other,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Attr {
    RbState,
    PawnPri,
    PriTeam,
    PriName,
    PriUniqueId,
    PriBot,
    CompVehicle,
    CompActive,
    BoostAmount,
    SecondsRemaining,
    TeamScore,
    HitTeamNum,
    Demolish,
    Ignore,
}

fn component_kind(suffix: &str) -> Option<Comp> {
    if suffix.starts_with("Boost") {
        Some(Comp::Boost)
    } else if suffix.starts_with("DoubleJump") {
        Some(Comp::DoubleJump)
    } else if suffix.starts_with("Dodge") {
        Some(Comp::Dodge)
    } else if suffix.starts_with("Jump") {
        Some(Comp::Jump)
    } else {
        None
    }
}

fn classify_object(name: &str) -> Kind {
    if (name.starts_with("Archetypes.Ball.") && !name.contains("BallComponent"))
        || name.ends_with(":BallArchetype")
    {
        return Kind::Ball;
    }
    if name.contains("PostGameLobby") {
        return Kind::LobbyCar;
    }
    if name.starts_with("Archetypes.Car.") || name.ends_with(":CarArchetype") {
        return Kind::Car;
    }
    if let Some(suffix) = name
        .strip_prefix("Archetypes.CarComponents.CarComponent_")
        .or_else(|| name.split_once(":CarArchetype.").map(|(_, s)| s))
    {
        return Kind::Component(component_kind(suffix));
    }
    if let Some(n) = name.strip_prefix("Archetypes.Teams.Team") {
        match n {
            "0" => return Kind::Team(0),
            "1" => return Kind::Team(1),
            _ => {}
        }
    }
    Kind::Other
}

fn classify_attribute(name: &str) -> Attr {
    match name {
        "TAGame.RBActor_TA:ReplicatedRBState" => Attr::RbState,
        "Engine.Pawn:PlayerReplicationInfo" => Attr::PawnPri,
        "Engine.PlayerReplicationInfo:Team" => Attr::PriTeam,
        "Engine.PlayerReplicationInfo:PlayerName" => Attr::PriName,
        "Engine.PlayerReplicationInfo:UniqueId" => Attr::PriUniqueId,
        "Engine.PlayerReplicationInfo:bBot" => Attr::PriBot,
        "TAGame.CarComponent_TA:Vehicle" => Attr::CompVehicle,
        "TAGame.CarComponent_TA:ReplicatedActive" => Attr::CompActive,
        "TAGame.CarComponent_Boost_TA:ReplicatedBoostAmount"
        | "TAGame.CarComponent_Boost_TA:ReplicatedBoost" => Attr::BoostAmount,
        "TAGame.GameEvent_Soccar_TA:SecondsRemaining" => Attr::SecondsRemaining,
        "Engine.TeamInfo:Score" => Attr::TeamScore,
        "TAGame.Ball_TA:HitTeamNum" => Attr::HitTeamNum,
        n if n.starts_with("TAGame.Car_TA:ReplicatedDemolish") => Attr::Demolish,
        _ => Attr::Ignore,
    }
}

#[derive(Clone, Copy)]
struct Body {
    pos: [f32; 3],
    vel: [f32; 3],
    /// As replicated: turned into roll, pitch, yaw by [`Walker::rotation`] only when sampled,
    /// since rigid bodies update several times per sample.
    rotation: Quaternion,
    sleeping: bool,
}

struct Actor {
    serial: u32,
    kind: Kind,
    object: usize,
    body: Option<Body>,
    body_time: f32,
    // car
    pri: Option<i32>,
    demolished: bool,
    comps: [Option<i32>; 4],
    // component
    vehicle: Option<i32>,
    active: bool,
    boost: Option<f32>,
}

impl Actor {
    fn new(serial: u32, kind: Kind, object: usize) -> Self {
        Actor {
            serial,
            kind,
            object,
            body: None,
            body_time: 0.0,
            pri: None,
            demolished: false,
            comps: [None; 4],
            vehicle: None,
            active: false,
            boost: None,
        }
    }
}

#[derive(Default)]
struct PriInfo {
    name: Option<String>,
    /// Identity that survives reconnects: platform, id and split-screen slot.
    key: Option<String>,
    platform_id: Option<String>,
    team: Option<u8>,
    bot: bool,
}

/// PRI info by the PRI actor's serial: serials are dense, so a Vec rather than a map.
#[derive(Default)]
struct Pris(Vec<Option<PriInfo>>);

impl Pris {
    fn get(&self, serial: u32) -> Option<&PriInfo> {
        self.0.get(serial as usize).and_then(Option::as_ref)
    }

    fn entry(&mut self, serial: u32) -> &mut PriInfo {
        let at = serial as usize;
        if at >= self.0.len() {
            self.0.resize_with(at + 1, || None);
        }
        self.0[at].get_or_insert_with(PriInfo::default)
    }
}

struct Row {
    sample: u32,
    pri: u32,
    values: [f32; CAR_WIDTH],
}

fn quat_to_rpy(x: f32, y: f32, z: f32, w: f32) -> [f32; 3] {
    let norm = (x * x + y * y + z * z + w * w).sqrt();
    if norm.is_nan() || norm <= 1e-6 {
        return [0.0; 3];
    }
    let (x, y, z, w) = (x / norm, y / norm, z / norm, w / norm);
    let roll = (2.0 * (w * x + y * z)).atan2(1.0 - 2.0 * (x * x + y * y));
    let pitch = (2.0 * (w * y - z * x)).clamp(-1.0, 1.0).asin();
    let yaw = (2.0 * (w * z + x * y)).atan2(1.0 - 2.0 * (y * y + z * z));
    [roll, pitch, yaw]
}

fn rpy_to_quat(roll: f32, pitch: f32, yaw: f32) -> [f32; 4] {
    let (sr, cr) = (roll / 2.0).sin_cos();
    let (sp, cp) = (pitch / 2.0).sin_cos();
    let (sy, cy) = (yaw / 2.0).sin_cos();
    [
        sr * cp * cy - cr * sp * sy,
        cr * sp * cy + sr * cp * sy,
        cr * cp * sy - sr * sp * cy,
        cr * cp * cy + sr * sp * sy,
    ]
}

fn unique_key(id: &UniqueId) -> Option<(String, String)> {
    let (platform, value) = match &id.remote_id {
        RemoteId::Steam(v) => ("Steam", v.to_string()),
        RemoteId::Xbox(v) => ("Xbox", v.to_string()),
        RemoteId::QQ(v) => ("QQ", v.to_string()),
        RemoteId::PsyNet(p) => ("PsyNet", p.online_id.to_string()),
        RemoteId::Switch(s) => ("Switch", s.online_id.to_string()),
        // Old PlayStation ids carry online_id 1 for everyone: the PSN name is the identity.
        RemoteId::PlayStation(p) if !p.name.is_empty() => ("PlayStation", p.name.clone()),
        RemoteId::PlayStation(p) => ("PlayStation", p.online_id.to_string()),
        RemoteId::Epic(s) => ("Epic", s.clone()),
        _ => return None,
    };
    if value.is_empty() || value == "0" {
        return None;
    }
    let platform_id = format!("{platform}:{value}");
    Some((format!("{platform_id}#{}", id.local_id), platform_id))
}

struct Walker<'r> {
    objects: Vec<Kind>,
    attrs: Vec<Attr>,
    actors: Vec<Option<Actor>>,
    cars: Vec<i32>,
    /// Boost components (what `drain_boost` visits instead of every actor).
    boosts: Vec<i32>,
    ball: Option<i32>,
    ball_spawned: bool,
    ball_state: [f32; BALL_WIDTH],
    ball_prev: Option<BallSample>,
    seconds_remaining: f32,
    next_serial: u32,
    pris: Pris,
    rows: Vec<Row>,
    legacy_scale: bool,
    legacy_rotation: bool,
    // per sample
    time: Vec<f32>,
    seconds: Vec<f32>,
    ball_rows: Vec<f32>,
    // events
    impulses: Vec<Impulse>,
    hits: Vec<HitTeamChange>,
    scores: HashMap<u32, i32>,
    increments: Vec<(f32, u8)>,
    frames: &'r [Frame],
}

impl<'r> Walker<'r> {
    fn new(replay: &'r Replay, frames: &'r [Frame]) -> Self {
        let net_version = replay.net_version.unwrap_or(0);
        Walker {
            objects: replay.objects.iter().map(|n| classify_object(n)).collect(),
            attrs: replay
                .objects
                .iter()
                .map(|n| classify_attribute(n))
                .collect(),
            actors: Vec::new(),
            cars: Vec::new(),
            boosts: Vec::new(),
            ball: None,
            ball_spawned: false,
            ball_state: [0.0; BALL_WIDTH],
            ball_prev: None,
            seconds_remaining: 0.0,
            next_serial: 0,
            pris: Pris::default(),
            rows: Vec::new(),
            // Before net version 5 rigid bodies are sent in whole uu (boxcars divides by 100)
            // and velocities in tenths; before 7 the rotation is a compressed (pitch, yaw, roll).
            legacy_scale: net_version < 5,
            legacy_rotation: net_version < 7,
            time: Vec::new(),
            seconds: Vec::new(),
            ball_rows: Vec::new(),
            impulses: Vec::new(),
            hits: Vec::new(),
            scores: HashMap::new(),
            increments: Vec::new(),
            frames,
        }
    }

    fn actor(&self, id: i32) -> Option<&Actor> {
        self.actors.get(id as usize).and_then(Option::as_ref)
    }

    fn actor_mut(&mut self, id: i32) -> Option<&mut Actor> {
        self.actors.get_mut(id as usize).and_then(Option::as_mut)
    }

    fn body(&self, rb: &RigidBody) -> Body {
        let (pos_scale, vel_scale) = if self.legacy_scale {
            (100.0, 10.0)
        } else {
            (1.0, 1.0)
        };
        let l = rb.location;
        let vel = rb
            .linear_velocity
            .map(|v| [v.x * vel_scale, v.y * vel_scale, v.z * vel_scale])
            .unwrap_or([0.0; 3]);
        Body {
            pos: [l.x * pos_scale, l.y * pos_scale, l.z * pos_scale],
            vel,
            rotation: rb.rotation,
            sleeping: rb.sleeping,
        }
    }

    /// roll, pitch, yaw (radians) of a body: rotation = Rz(yaw)·Ry(pitch)·Rx(roll).
    fn rotation(&self, body: &Body) -> [f32; 3] {
        let q = body.rotation;
        if self.legacy_rotation {
            // compressed (pitch, yaw, roll) / pi; the legacy roll sign is flipped.
            let [x, y, z, w] = rpy_to_quat(-q.z * PI, q.x * PI, q.y * PI);
            quat_to_rpy(x, y, z, w)
        } else {
            quat_to_rpy(q.x, q.y, q.z, q.w)
        }
    }

    fn pri_serial(&self, car: &Actor) -> Option<u32> {
        let pri = self.actor(car.pri?)?;
        self.pris.get(pri.serial).is_some().then_some(pri.serial)
    }

    fn car_team(&self, car: &Actor) -> Option<(u32, u8)> {
        let serial = self.pri_serial(car)?;
        Some((serial, self.pris.get(serial)?.team?))
    }

    fn nearest_cars(&self, time: f32, ball: [f32; 3]) -> NearestByTeam {
        let mut nearest: NearestByTeam = [None, None];
        for &id in &self.cars {
            let Some(car) = self.actor(id) else { continue };
            let Some(body) = car.body.filter(|_| !car.demolished) else {
                continue;
            };
            let Some((pri, team)) = self.car_team(car) else {
                continue;
            };
            let dt = (time - car.body_time).clamp(0.0, MAX_EXTRAPOLATION_S);
            let dist = (0..3)
                .map(|a| (body.pos[a] + body.vel[a] * dt - ball[a]).powi(2))
                .sum::<f32>()
                .sqrt();
            let slot = &mut nearest[team as usize];
            if slot.is_none_or(|n| dist < n.dist) {
                *slot = Some(Nearest { pri, dist });
            }
        }
        nearest
    }

    fn spawn(&mut self, id: i32, object: usize, location: Option<boxcars::Vector3i>) {
        let kind = self.objects.get(object).copied().unwrap_or(Kind::Other);
        let idx = id as usize;
        if idx >= self.actors.len() {
            self.actors.resize_with(idx + 1, || None);
        }
        if let Some(existing) = &self.actors[idx] {
            // Old replays re-open live actors (same archetype, no delete): keep their state.
            if existing.object == object {
                return;
            }
            self.delete(id);
        }
        self.actors[idx] = Some(Actor::new(self.next_serial, kind, object));
        self.next_serial += 1;
        match kind {
            Kind::Car => self.cars.push(id),
            Kind::Component(Some(Comp::Boost)) => self.boosts.push(id),
            Kind::Ball if self.ball.is_none() => {
                self.ball = Some(id);
                self.ball_spawned = true;
                self.ball_prev = None;
                // A new ball sits where it spawned (kickoff spot) until its first update.
                if let Some(at) = location {
                    self.ball_state = [at.x as f32, at.y as f32, at.z as f32, 0.0, 0.0, 0.0];
                }
            }
            _ => {}
        }
    }

    fn delete(&mut self, id: i32) {
        let Some(actor) = self.actors.get_mut(id as usize).and_then(Option::take) else {
            return;
        };
        match actor.kind {
            Kind::Car => self.cars.retain(|&c| c != id),
            Kind::Component(Some(Comp::Boost)) => self.boosts.retain(|&c| c != id),
            _ => {}
        }
        if self.ball == Some(id) {
            // The ball keeps its last state in the frames until the next one spawns.
            self.ball = None;
            self.ball_prev = None;
        }
    }

    fn update(&mut self, time: f32, id: i32, object: usize, attribute: &Attribute) {
        let attr = self.attrs.get(object).copied().unwrap_or(Attr::Ignore);
        if attr == Attr::Ignore {
            return;
        }
        let Some((kind, serial)) = self.actor(id).map(|a| (a.kind, a.serial)) else {
            return;
        };
        match (attr, attribute) {
            (Attr::RbState, Attribute::RigidBody(rb)) => self.rigid_body(time, id, rb),
            (Attr::PawnPri, Attribute::ActiveActor(link)) => {
                if kind == Kind::Other {
                    self.cars.push(id);
                }
                let pri = link.active.then_some(link.actor.0);
                if let Some(pri_serial) = pri.and_then(|p| self.actor(p)).map(|a| a.serial) {
                    self.pris.entry(pri_serial);
                }
                if let Some(car) = self.actor_mut(id) {
                    if car.kind == Kind::Other {
                        car.kind = Kind::Car;
                    }
                    car.pri = pri;
                }
            }
            (Attr::PriTeam, Attribute::ActiveActor(link)) => {
                let team = match self.actor(link.actor.0).map(|a| a.kind) {
                    Some(Kind::Team(n)) if link.active => Some(n),
                    _ => None,
                };
                if let Some(team) = team {
                    self.pris.entry(serial).team = Some(team);
                }
            }
            (Attr::PriName, Attribute::String(name)) => {
                self.pris.entry(serial).name = Some(name.clone());
            }
            (Attr::PriUniqueId, Attribute::UniqueId(unique)) => {
                if let Some((key, platform_id)) = unique_key(unique) {
                    let info = self.pris.entry(serial);
                    info.key = Some(key);
                    info.platform_id = Some(platform_id);
                }
            }
            (Attr::PriBot, Attribute::Boolean(bot)) => self.pris.entry(serial).bot = *bot,
            (Attr::CompVehicle, Attribute::ActiveActor(link)) => self.link_component(id, link),
            (Attr::CompActive, Attribute::Byte(active)) => {
                if let Some(comp) = self.actor_mut(id) {
                    comp.active = active % 2 == 1;
                }
            }
            (Attr::BoostAmount, Attribute::Byte(amount)) => self.set_boost(id, *amount),
            (Attr::BoostAmount, Attribute::ReplicatedBoost(boost)) => {
                self.set_boost(id, boost.boost_amount)
            }
            (Attr::SecondsRemaining, Attribute::Int(seconds)) => {
                self.seconds_remaining = *seconds as f32;
            }
            (Attr::TeamScore, Attribute::Int(score)) => {
                if let Kind::Team(team) = kind {
                    let previous = self.scores.insert(serial, *score).unwrap_or(0);
                    for _ in previous..*score {
                        self.increments.push((time, team));
                    }
                }
            }
            (Attr::HitTeamNum, Attribute::Byte(team)) if Some(id) == self.ball && *team < 2 => {
                let ball = [self.ball_state[0], self.ball_state[1], self.ball_state[2]];
                let nearest = self.nearest_cars(time, ball);
                self.hits.push(HitTeamChange {
                    time,
                    team: *team,
                    nearest,
                });
            }
            (Attr::Demolish, demolish) => {
                let victim = match demolish {
                    Attribute::Demolish(d) => Some(d.victim.0),
                    Attribute::DemolishFx(d) => Some(d.victim.0),
                    Attribute::DemolishExtended(d) => Some(d.victim.actor.0),
                    _ => None,
                };
                if let Some(car) = victim.and_then(|v| self.actor_mut(v)) {
                    if car.kind == Kind::Car {
                        car.demolished = true;
                    }
                }
            }
            _ => {}
        }
    }

    fn link_component(&mut self, id: i32, link: &boxcars::ActiveActor) {
        let Some(comp) = self.actor_mut(id) else {
            return;
        };
        let Kind::Component(Some(which)) = comp.kind else {
            return;
        };
        let vehicle = link.active.then_some(link.actor.0);
        comp.vehicle = vehicle;
        if let Some(car) = vehicle.and_then(|v| self.actor_mut(v)) {
            car.comps[which as usize] = Some(id);
        }
    }

    fn set_boost(&mut self, id: i32, amount: u8) {
        let Some(comp) = self.actor_mut(id) else {
            return;
        };
        comp.boost = Some(f32::from(amount));
        let boost = Kind::Component(Some(Comp::Boost));
        if comp.kind != boost && matches!(comp.kind, Kind::Component(_) | Kind::Other) {
            comp.kind = boost;
            self.boosts.push(id);
        }
    }

    fn rigid_body(&mut self, time: f32, id: i32, rb: &RigidBody) {
        let body = self.body(rb);
        let Some(actor) = self.actor_mut(id) else {
            return;
        };
        actor.body = Some(body);
        actor.body_time = time;
        let is_ball = actor.kind == Kind::Ball;
        // Some replays spawn a second, never-moving ball actor first: the ball is the one that
        // moves, unless the current one moves too (multi-ball modes keep the first).
        let current_moves = self
            .ball
            .and_then(|b| self.actor(b))
            .is_some_and(|b| b.body.is_some());
        if is_ball && self.ball != Some(id) && !current_moves {
            self.ball = Some(id);
            self.ball_spawned = true;
            self.ball_prev = None;
        }
        if self.ball != Some(id) {
            return;
        }
        self.ball_state = [
            body.pos[0],
            body.pos[1],
            body.pos[2],
            body.vel[0],
            body.vel[1],
            body.vel[2],
        ];
        let sample = BallSample {
            time,
            pos: body.pos,
            vel: body.vel,
        };
        if let Some(prev) = self.ball_prev {
            if touches::impulse(&prev, &sample, body.sleeping)
                .is_some_and(|dv| dv > touches::MIN_IMPULSE)
            {
                let nearest = self.nearest_cars(time, body.pos);
                self.impulses.push(Impulse { time, nearest });
            }
        }
        self.ball_prev = Some(sample);
    }

    fn drain_boost(&mut self, dt: f32) {
        if dt <= 0.0 {
            return;
        }
        for &id in &self.boosts {
            let Some(actor) = self.actors.get_mut(id as usize).and_then(Option::as_mut) else {
                continue;
            };
            if actor.active {
                let amount = actor.boost.unwrap_or(BOOST_DEFAULT_RAW);
                actor.boost = Some((amount - dt * BOOST_DRAIN_RAW_PER_S).max(0.0));
            }
        }
    }

    fn car_values(&self, car: &Actor, body: &Body) -> [f32; CAR_WIDTH] {
        let comp = |which: Comp| {
            car.comps[which as usize]
                .and_then(|c| self.actor(c))
                .filter(|c| c.vehicle.is_some())
        };
        let boost = comp(Comp::Boost)
            .and_then(|c| c.boost)
            .unwrap_or(BOOST_DEFAULT_RAW);
        let jumping = [Comp::Jump, Comp::DoubleJump, Comp::Dodge]
            .into_iter()
            .any(|which| comp(which).is_some_and(|c| c.active));
        let rot = self.rotation(body);
        [
            body.pos[0],
            body.pos[1],
            body.pos[2],
            rot[0],
            rot[1],
            rot[2],
            body.vel[0],
            body.vel[1],
            body.vel[2],
            (boost / BOOST_MAX_RAW).clamp(0.0, 1.0),
            if jumping { 1.0 } else { 0.0 },
            0.0,
        ]
    }

    fn emit(&mut self, sample: u32, time: f64) {
        self.time.push(time as f32);
        self.seconds.push(self.seconds_remaining);
        self.ball_rows.extend_from_slice(&self.ball_state);
        for i in 0..self.cars.len() {
            let Some(car) = self.actor(self.cars[i]) else {
                continue;
            };
            if car.demolished || car.kind != Kind::Car {
                continue;
            }
            let (Some(body), Some(pri)) = (car.body, self.pri_serial(car)) else {
                continue;
            };
            let values = self.car_values(car, &body);
            self.rows.push(Row {
                sample,
                pri,
                values,
            });
        }
    }

    fn walk(&mut self, fps: f64) -> Result<(), ExtractError> {
        let frames = self.frames;
        let t0 = f64::from(frames[0].time);
        let t_last = frames.iter().map(|f| f64::from(f.time)).fold(t0, f64::max);
        if !t0.is_finite() || !t_last.is_finite() {
            return Err(ExtractError::Content(
                "bad frame times: non-finite network frame time".into(),
            ));
        }
        if t_last - t0 > MAX_DURATION_S {
            return Err(ExtractError::Content(format!(
                "bad frame times: the network frames span {:.0} s, more than {MAX_DURATION_S} s",
                t_last - t0
            )));
        }
        let n_samples = ((t_last - t0) * fps + 1e-6).floor() as u64 + 1;
        let mut next: u64 = 0;
        let mut last_time = t0;
        for frame in frames {
            let time = f64::from(frame.time).max(last_time);
            while next < n_samples && t0 + next as f64 / fps < time {
                self.emit(next as u32, t0 + next as f64 / fps);
                next += 1;
            }
            self.drain_boost((time - last_time) as f32);
            last_time = time;
            let t = time as f32;
            for deleted in &frame.deleted_actors {
                self.delete(deleted.0);
            }
            for new in &frame.new_actors {
                let location = new.initial_trajectory.location;
                self.spawn(new.actor_id.0, new.object_id.0 as usize, location);
            }
            for update in &frame.updated_actors {
                self.update(
                    t,
                    update.actor_id.0,
                    update.object_id.0 as usize,
                    &update.attribute,
                );
            }
        }
        while next < n_samples {
            self.emit(next as u32, t0 + next as f64 / fps);
            next += 1;
        }
        Ok(())
    }
}

/// Slack (network frames) for a header goal frame past the end: a replay that stops at a goal
/// records that goal at `frames.len()`.
const GOAL_FRAME_SLACK: usize = 60;

fn frame_time(frames: &[Frame], index: usize) -> Option<f32> {
    match frames.get(index) {
        Some(frame) => Some(frame.time),
        None if index < frames.len() + GOAL_FRAME_SLACK => frames.last().map(|f| f.time),
        None => None,
    }
}

fn time_goals(header: &Header, frames: &[Frame], increments: &[(f32, u8)]) -> Vec<Goal> {
    let mut used = vec![false; increments.len()];
    let mut goals = Vec::new();
    for goal in &header.goals {
        let anchor = goal.frame.and_then(|f| frame_time(frames, f));
        let candidates = increments
            .iter()
            .enumerate()
            .filter(|(i, (_, team))| !used[*i] && *team == goal.team);
        let chosen = match anchor {
            Some(at) => candidates
                .filter(|(_, (t, _))| (t - at).abs() <= GOAL_MATCH_WINDOW_S)
                .min_by(|a, b| (a.1 .0 - at).abs().total_cmp(&(b.1 .0 - at).abs()))
                .map(|(i, _)| i),
            None => None,
        };
        let (time, source) = match (chosen, anchor) {
            (Some(i), _) => {
                used[i] = true;
                (increments[i].0, "score")
            }
            (None, Some(at)) => (at, "header"),
            (None, None) => continue,
        };
        goals.push(Goal {
            time,
            team: goal.team,
            scorer: goal.scorer.clone(),
            source,
        });
    }
    goals.sort_by(|a, b| a.time.total_cmp(&b.time));
    goals
}

struct Slot {
    key: String,
    name: String,
    team: Option<u8>,
    platform_id: Option<String>,
    is_bot: bool,
    first_sample: u32,
}

/// Identity that merges a player's PRIs (reconnects): platform id and split-screen slot; for
/// bots and players without an id, name and team (bots of both teams may share a name).
fn player_key(serial: u32, info: &PriInfo) -> String {
    match (&info.key, &info.name) {
        (Some(key), _) if !info.bot => key.clone(),
        (_, Some(name)) => format!("name:{name}:team{:?}", info.team),
        _ => format!("pri:{serial}"),
    }
}

/// Players = PRIs that drove a car, merged by identity; ordered team 0, team 1, first seen.
/// Also returns each PRI's player index, by PRI serial (`None`: drove no car).
fn players(
    rows: &[Row],
    pris: &Pris,
    header: &Header,
) -> Result<(Vec<Slot>, Vec<Option<usize>>), ExtractError> {
    let mut slots: Vec<Slot> = Vec::new();
    let mut by_key: HashMap<String, usize> = HashMap::new();
    let mut slot_of_pri: Vec<Option<usize>> = vec![None; pris.0.len()];
    for row in rows {
        if slot_of_pri[row.pri as usize].is_some() {
            continue;
        }
        let info = pris.get(row.pri).expect("a row's PRI is known");
        let key = player_key(row.pri, info);
        let slot = *by_key.entry(key.clone()).or_insert_with(|| {
            slots.push(Slot {
                key,
                name: info.name.clone().unwrap_or_default(),
                team: None,
                platform_id: info.platform_id.clone(),
                is_bot: info.bot,
                first_sample: row.sample,
            });
            slots.len() - 1
        });
        slot_of_pri[row.pri as usize] = Some(slot);
    }
    // A player's team: that of its latest PRI (by spawn) that has one, else the header's.
    let pri_slots = slot_of_pri
        .iter()
        .enumerate()
        .filter_map(|(serial, slot)| Some((serial as u32, (*slot)?)));
    for (serial, slot) in pri_slots {
        let info = pris.get(serial).expect("a row's PRI is known");
        if let Some(team) = info.team {
            slots[slot].team = Some(team);
        }
        if slots[slot].name.is_empty() {
            slots[slot].name = info.name.clone().unwrap_or_default();
        }
    }
    for slot in &mut slots {
        if slot.team.is_none() {
            slot.team = header
                .player_teams
                .iter()
                .find(|(name, _)| *name == slot.name)
                .map(|(_, team)| *team);
        }
        if slot.team.is_none() {
            return Err(ExtractError::Content(format!(
                "player without a team: '{}' ({}) drove a car but is on neither team",
                slot.name, slot.key
            )));
        }
    }
    let mut order: Vec<usize> = (0..slots.len()).collect();
    order.sort_by_key(|&s| (slots[s].team, slots[s].first_sample, s));
    let mut index_of_slot = vec![0usize; slots.len()];
    for (index, &slot) in order.iter().enumerate() {
        index_of_slot[slot] = index;
    }
    let index_of_pri = slot_of_pri
        .into_iter()
        .map(|slot| slot.map(|s| index_of_slot[s]))
        .collect();
    let mut ordered: Vec<Option<Slot>> = slots.into_iter().map(Some).collect();
    let players = order
        .iter()
        .map(|&s| ordered[s].take().expect("each slot once"))
        .collect();
    Ok((players, index_of_pri))
}

/// boxcars' decoding of the whole file, CRC checked, network data included: all `extract`
/// needs from boxcars.
pub fn decode(data: &[u8]) -> Result<Replay, ExtractError> {
    boxcars::ParserBuilder::new(data)
        .always_check_crc()
        .must_parse_network_data()
        .parse()
        .map_err(|e| ExtractError::Decode(decode_message(&e)))
}

pub fn extract(data: &[u8], fps: f64) -> Result<Extracted, ExtractError> {
    if !(fps > 0.0 && fps <= 120.0) {
        return Err(ExtractError::Content(format!(
            "bad fps: {fps} (must be in (0, 120])"
        )));
    }
    let replay = decode(data)?;
    let header = header::read(&replay.properties);
    let frames: &[Frame] = replay
        .network_frames
        .as_ref()
        .map(|n| n.frames.as_slice())
        .unwrap_or(&[]);
    if frames.is_empty() {
        return Err(ExtractError::Content(
            "no network frames: the replay holds a header only".into(),
        ));
    }
    let mut walker = Walker::new(&replay, frames);
    walker.walk(fps)?;
    if !walker.ball_spawned {
        return Err(ExtractError::Content(
            "no ball: the replay has no ball actor (a game mode without a ball, e.g. knockout)"
                .into(),
        ));
    }
    if walker.rows.is_empty() {
        return Err(ExtractError::Content(
            "no cars: no player drove a car in the replay".into(),
        ));
    }
    let (slots, index_of_pri) = players(&walker.rows, &walker.pris, &header)?;
    let n_frames = walker.time.len();
    let n_players = slots.len();
    let mut cars = vec![0.0f32; n_frames * n_players * CAR_WIDTH];
    for cell in cars.chunks_exact_mut(CAR_WIDTH) {
        cell[DEMOLISHED] = 1.0;
    }
    for row in &walker.rows {
        let player = index_of_pri[row.pri as usize].expect("a row's PRI is a player");
        let at = (row.sample as usize * n_players + player) * CAR_WIDTH;
        cars[at..at + CAR_WIDTH].copy_from_slice(&row.values);
    }
    let t0 = walker.time[0];
    let mut touches: Vec<[i32; 2]> = touches::resolve(&walker.impulses, &walker.hits)
        .into_iter()
        .filter_map(|touch| {
            let player = (*index_of_pri.get(touch.pri as usize)?)?;
            let frame = ((touch.time - t0) * fps as f32).round() as i64;
            let frame = frame.clamp(0, n_frames as i64 - 1) as i32;
            Some([frame, player as i32])
        })
        .collect();
    touches.sort();
    touches.dedup();
    let goals = time_goals(&header, frames, &walker.increments);
    Ok(Extracted {
        n_frames,
        time: walker.time,
        seconds_remaining: walker.seconds,
        ball: walker.ball_rows,
        cars,
        players: slots
            .into_iter()
            .map(|s| Player {
                name: s.name,
                team: s.team.unwrap_or(0),
                platform_id: s.platform_id,
                is_bot: s.is_bot,
            })
            .collect(),
        goals,
        header_goals: header.goals.len(),
        touches,
        team_size: header.team_size,
        network_frames: frames.len(),
        map_name: header.map_name.clone(),
        mode_objects: mode_objects(&replay.objects),
    })
}

/// Object names that tell the game mode: balls (puck, basketball...), game events (Soccar,
/// Hockey, Items...) and mutators (e.g. Rumble's and Spike Rush's `ItemsMode`).
fn mode_objects(objects: &[String]) -> Vec<String> {
    const PREFIXES: [&str; 3] = [
        "Archetypes.Ball.",
        "Archetypes.GameEvent.",
        "Archetypes.Mutators.",
    ];
    objects
        .iter()
        .filter(|name| PREFIXES.iter().any(|p| name.starts_with(p)))
        .cloned()
        .collect()
}

fn decode_message(error: &boxcars::ParseError) -> String {
    match error {
        boxcars::ParseError::CrcMismatch(expected, found) => format!(
            "corrupt or truncated file: CRC mismatch (expected {expected}, computed {found})"
        ),
        other => other.to_string(),
    }
}
