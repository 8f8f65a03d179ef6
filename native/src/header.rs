//! What the replay header says: team size, the goals (network frame, scorer, team), the
//! players' teams (used to time goals and as a fallback for a player's team) and the map.

use boxcars::HeaderProp;

#[derive(Debug, Clone)]
pub struct HeaderGoal {
    /// Network frame index the header records for the goal, when present and non-negative.
    pub frame: Option<usize>,
    pub team: u8,
    pub scorer: Option<String>,
}

#[derive(Debug, Default)]
pub struct Header {
    pub team_size: Option<i32>,
    pub goals: Vec<HeaderGoal>,
    /// (name, team) from `PlayerStats`, when the header has them.
    pub player_teams: Vec<(String, u8)>,
    /// The arena (`MapName`, e.g. `Stadium_P`, `HoopsStadium_P`), when the header has it.
    pub map_name: Option<String>,
}

fn prop<'a>(props: &'a [(String, HeaderProp)], key: &str) -> Option<&'a HeaderProp> {
    props.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn team_of(value: Option<&HeaderProp>) -> Option<u8> {
    match value?.as_i32()? {
        t @ (0 | 1) => Some(t as u8),
        _ => None,
    }
}

pub fn read(props: &[(String, HeaderProp)]) -> Header {
    let team_size = prop(props, "TeamSize").and_then(HeaderProp::as_i32);
    let goals = prop(props, "Goals")
        .and_then(HeaderProp::as_array)
        .map(|goals| {
            goals
                .iter()
                .filter_map(|goal| {
                    let team = team_of(prop(goal, "PlayerTeam"))?;
                    let frame = prop(goal, "frame")
                        .and_then(HeaderProp::as_i32)
                        .and_then(|f| usize::try_from(f).ok());
                    let scorer = prop(goal, "PlayerName")
                        .and_then(HeaderProp::as_string)
                        .map(str::to_owned);
                    Some(HeaderGoal {
                        frame,
                        team,
                        scorer,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let player_teams = prop(props, "PlayerStats")
        .and_then(HeaderProp::as_array)
        .map(|stats| {
            stats
                .iter()
                .filter_map(|player| {
                    let name = prop(player, "Name")?.as_string()?.to_owned();
                    Some((name, team_of(prop(player, "Team"))?))
                })
                .collect()
        })
        .unwrap_or_default();
    let map_name = prop(props, "MapName")
        .and_then(HeaderProp::as_string)
        .map(str::to_owned);
    Header {
        team_size,
        goals,
        player_teams,
        map_name,
    }
}
