"""The pitch's dimensions and the scales that bring the features near [-1, 1]."""

GOAL_Y = 5120.0
SIDE_WALL_X = 4096.0
POS_SCALE = 5120.0
CAR_SPEED_SCALE = 2300.0
BALL_SPEED_SCALE = 6000.0
ON_GROUND_MAX_Z = 25.0
WALL_MARGIN = 200.0  # a car off the ground this close to a wall is on the wall
MATCH_SECONDS = 300.0
SCORE_DIFF_CAP = 3.0
GOALS_CAP = 5.0
THIRD_Y = GOAL_Y / 3.0
TOUCH_COUNT_SCALE = 5.0
