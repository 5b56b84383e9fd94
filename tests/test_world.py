import math

import numpy as np
import pytest

from bagel.errors import InputError
from workbench import chains
from workbench.chains.actions import (
    ACTION_TABLE,
    MAX_PATH,
    MOVE_STEP,
    PITCH_LIMIT,
    TURN_DEGREES,
    parse_path,
)
from workbench.world.render import (
    COLOUR_NAMES,
    RESOLUTION,
    TURNTABLE_CENTRE,
    Ball,
    Pose,
    World,
    caption,
    make_level,
    random_world,
    turntable_world,
)


def open_world(heading: float = 0.0) -> World:
    return World(make_level(0), Pose(4.0, 2.5, heading))


def test_chain_and_world_share_one_action_table():
    assert chains.ACTIONS == tuple(ACTION_TABLE)
    assert chains.DEFAULT_TEMPLATES == {k: a.template for k, a in ACTION_TABLE.items()}


def test_render_is_deterministic_and_sized():
    a = random_world(3, make_level(5)).step("forward").step(None).render()
    b = random_world(3, make_level(5)).step("forward").step(None).render()
    assert a.shape == (RESOLUTION, RESOLUTION, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, random_world(4, make_level(5)).render())


@pytest.mark.parametrize("resolution", [256, 512])
def test_the_same_view_renders_at_a_large_models_size(resolution):
    """eval-world --resolution: the view ray cast at 256 or 512, pooled back to 64 × 64,
    is the model's 64 × 64 view (edges sampled finer: measured 40.7 and 41.0 dB)."""
    world = random_world(3, make_level(1)).step("turn_left")
    large = world.render(resolution)
    assert large.shape == (resolution, resolution, 3) and large.dtype == np.uint8
    k = resolution // RESOLUTION
    pooled = large.reshape(RESOLUTION, k, RESOLUTION, k, 3).mean((1, 3))
    mse = ((pooled - world.render().astype(float)) ** 2).mean()
    assert 10 * math.log10(255**2 / mse) > 35
    assert not np.array_equal(large, random_world(3, make_level(1)).render(resolution))


@pytest.mark.parametrize(
    ("action", "dx", "dy", "turn", "pitch"),
    [
        ("forward", MOVE_STEP, 0, 0, 0),
        ("back", -MOVE_STEP, 0, 0, 0),
        ("strafe_left", 0, MOVE_STEP, 0, 0),  # facing +x, left is +y (counter-clockwise)
        ("strafe_right", 0, -MOVE_STEP, 0, 0),
        ("turn_left", 0, 0, TURN_DEGREES, 0),
        ("turn_right", 0, 0, -TURN_DEGREES, 0),
        ("look_up", 0, 0, 0, 1),
        ("look_down", 0, 0, 0, -1),
    ],
)
def test_each_action_moves_the_pose_as_documented(action, dx, dy, turn, pitch):
    before = open_world().pose
    after = open_world().step(action).pose
    assert after.x == pytest.approx(before.x + dx)
    assert after.y == pytest.approx(before.y + dy)
    delta = math.degrees(after.heading - before.heading)
    assert (delta + 180) % 360 - 180 == pytest.approx(turn)
    assert after.pitch == before.pitch + pitch


def test_every_action_changes_the_view():
    base = open_world(0.7).render()
    for action in ACTION_TABLE:
        assert not np.array_equal(open_world(0.7).step(action).render(), base), action


def test_walls_stop_the_camera_and_pitch_is_bounded():
    world = World(make_level(0), Pose(1.35, 3.5, math.pi))  # facing the x = 1 wall
    assert world.step("forward").pose.x == world.pose.x
    assert world.step("back").pose.x == pytest.approx(world.pose.x + MOVE_STEP)
    for _ in range(PITCH_LIMIT + 3):
        world = world.step("look_up")
    assert world.pose.pitch == PITCH_LIMIT


def test_a_rolling_ball_bounces_off_the_walls():
    world = World(make_level(0), Pose(4, 4), (Ball(6.5, 5.5, 1, vx=0.2, vy=0.0),))
    xs = []
    for _ in range(20):
        world = world.step(None)
        xs.append(world.balls[0].x)
    assert max(xs) < 7 - 0.25 + 1e-9  # never inside the wall at x = 7
    assert xs[-1] < xs[0]  # it came back
    assert world.tick == 20 and world.pose == Pose(4, 4)


def test_turntable_orbit_faces_the_object():
    world = turntable_world()
    for degrees in (0, 45, 90, 180):
        pose = world.orbit(degrees, TURNTABLE_CENTRE).pose
        r = math.hypot(pose.x - TURNTABLE_CENTRE[0], pose.y - TURNTABLE_CENTRE[1])
        assert r == pytest.approx(2.0)
        assert caption(world.orbit(degrees, TURNTABLE_CENTRE)).startswith("a ")
    # the block's four faces differ, so a quarter turn shows another colour ahead
    views = [caption(world.orbit(d, TURNTABLE_CENTRE)) for d in (0, 90, 180, 270)]
    assert len(set(views)) == 4


def test_caption_names_the_wall_ahead():
    world = World(make_level(0), Pose(1.35, 3.5, math.pi))
    expected = COLOUR_NAMES[world.level.cells[3, 0]]
    assert caption(world) == f"a {expected} wall near ahead."


def test_a_typed_path_reads_as_moves_in_order():
    assert parse_path("forward x2, Turn Left,strafe_right*2 , look up ×1,") == [
        "forward",
        "forward",
        "turn_left",
        "strafe_right",
        "strafe_right",
        "look_up",
    ]
    assert parse_path(f"back x{MAX_PATH}") == ["back"] * MAX_PATH


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "holds no move"),
        (" , ,", "holds no move"),
        ("forward, fly", "'fly' is not a move (moves: forward, back, turn left"),
        ("forward x0", "repeats at least once"),
        (f"forward x{MAX_PATH}, back", f"at most {MAX_PATH} moves"),
        ("forward x99999999999999999999", f"at most {MAX_PATH} moves"),
    ],
)
def test_a_bad_path_is_refused_naming_the_part(text, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        parse_path(text)
