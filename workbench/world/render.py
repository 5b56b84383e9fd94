"""A small rendered 3D world with ground truth: first-person views of a walled level.

Pure numpy, deterministic for a seed. A level is a grid of cells (0 = floor, k > 0 = a
wall block of colour k, each face of a block may have its own colour), with a sky above
the horizon, a floor below it and coloured balls on the floor, one of which may roll and
bounce off the walls. The camera stands at (x, y) with a heading (radians, 0 = +x,
counter-clockwise) and a pitch (horizon shift in steps); `World.step(action)` applies
one action of `workbench.chains.actions.ACTION_TABLE` (a move into a wall is refused: the
camera stays) and advances the world one tick (the rolling ball moves).

Views are RESOLUTION × RESOLUTION RGB (64 × 64, the world model's size; `render` takes
another resolution for other models), ray cast column by column at twice the resolution
and averaged 2 × 2 (anti-aliased edges).

The turntable scene (`turntable_world`) is a room with one block in its middle whose four
faces have different colours; `orbit(degrees)` moves the camera around it, so a view
after turning the object by d degrees is the view from an orbit of −d degrees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from workbench.chains.actions import ACTION_TABLE, PITCH_LIMIT

RESOLUTION = 64
SUPERSAMPLE = 2
FOV_DEGREES = 66.0
PITCH_STEP = 0.125  # horizon shift per pitch step, as a fraction of the view height
CAMERA_RADIUS = 0.2  # no closer than this to a wall
SKY = (135, 190, 235)
FLOOR = (110, 100, 90)
SIDE_SHADE = 0.75  # faces along y are darker, so corners read

# Wall and ball colours with the names the captions use (index 0 is unused: floor).
PALETTE: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("none", (0, 0, 0)),
    ("red", (215, 50, 45)),
    ("green", (60, 170, 70)),
    ("blue", (50, 80, 210)),
    ("yellow", (235, 210, 60)),
    ("purple", (140, 70, 180)),
    ("orange", (240, 140, 40)),
    ("white", (235, 235, 235)),
    ("cyan", (60, 200, 210)),
)
COLOUR_NAMES = tuple(name for name, _ in PALETTE)


@dataclass(frozen=True)
class Pose:
    x: float
    y: float
    heading: float = 0.0  # radians
    pitch: int = 0  # steps, positive = looking up


@dataclass(frozen=True)
class Ball:
    x: float
    y: float
    colour: int  # index into PALETTE
    radius: float = 0.25
    vx: float = 0.0  # units per tick
    vy: float = 0.0


@dataclass(frozen=True)
class Level:
    """cells[row=y, col=x]: 0 floor, k wall; faces[y, x, side] a face's colour index
    (side 0: facing −x, 1: +x, 2: −y, 3: +y)."""

    cells: np.ndarray
    faces: np.ndarray

    def is_wall(self, x: float, y: float) -> bool:
        i, j = int(math.floor(y)), int(math.floor(x))
        h, w = self.cells.shape
        return not (0 <= i < h and 0 <= j < w) or self.cells[i, j] > 0

    def free(self, x: float, y: float, radius: float) -> bool:
        """Whether a disc of `radius` at (x, y) touches no wall cell."""
        return not any(
            self.is_wall(x + dx, y + dy) for dx in (-radius, radius) for dy in (-radius, radius)
        )


@dataclass(frozen=True)
class World:
    level: Level
    pose: Pose
    balls: tuple[Ball, ...] = field(default_factory=tuple)
    tick: int = 0

    def step(self, action: str | None = None) -> World:
        """The world after one action (None: the camera stays) and one tick."""
        pose = self.pose if action is None else move(self.level, self.pose, action)
        balls = tuple(roll(self.level, b) for b in self.balls)
        return replace(self, pose=pose, balls=balls, tick=self.tick + 1)

    def orbit(self, degrees: float, centre: tuple[float, float]) -> World:
        """The camera moved around `centre` by `degrees` (counter-clockwise), facing it."""
        angle = math.radians(degrees)
        dx, dy = self.pose.x - centre[0], self.pose.y - centre[1]
        c, s = math.cos(angle), math.sin(angle)
        x, y = centre[0] + c * dx - s * dy, centre[1] + s * dx + c * dy
        heading = math.atan2(centre[1] - y, centre[0] - x)
        return replace(self, pose=replace(self.pose, x=x, y=y, heading=heading))

    def render(self, resolution: int = RESOLUTION) -> np.ndarray:
        return render(self.level, self.pose, self.balls, resolution)


def move(level: Level, pose: Pose, action: str) -> Pose:
    """Apply one action of ACTION_TABLE; a move that would touch a wall is refused."""
    if action not in ACTION_TABLE:
        raise ValueError(f"unknown action {action!r}; the actions are {', '.join(ACTION_TABLE)}")
    a = ACTION_TABLE[action]
    c, s = math.cos(pose.heading), math.sin(pose.heading)
    x = pose.x + a.forward * c + a.right * s
    y = pose.y + a.forward * s - a.right * c
    if not level.free(x, y, CAMERA_RADIUS):
        x, y = pose.x, pose.y
    heading = (pose.heading + math.radians(a.turn)) % (2 * math.pi)
    pitch = max(-PITCH_LIMIT, min(PITCH_LIMIT, pose.pitch + a.pitch))
    return Pose(x, y, heading, pitch)


def roll(level: Level, ball: Ball) -> Ball:
    """One tick of a ball: it moves by its velocity and bounces off walls (per axis)."""
    vx, vy = ball.vx, ball.vy
    if not level.free(ball.x + vx, ball.y, ball.radius):
        vx = -vx
    if not level.free(ball.x + vx, ball.y + vy, ball.radius):
        vy = -vy
    x, y = ball.x + vx, ball.y + vy
    if not level.free(x, y, ball.radius):
        x, y = ball.x, ball.y
    return replace(ball, x=x, y=y, vx=vx, vy=vy)


# -- rendering ----------------------------------------------------------------------------


def render(
    level: Level, pose: Pose, balls: tuple[Ball, ...] = (), resolution: int = RESOLUTION
) -> np.ndarray:
    """The camera's view: uint8 [resolution, resolution, 3] (RESOLUTION, the model's
    size, unless asked for another: the same view, ray cast at that size)."""
    n = resolution * SUPERSAMPLE
    depth, colour_index, shaded = _cast_columns(level, pose, n)  # [n] each
    colour = np.array([rgb for _, rgb in PALETTE], float)[colour_index]  # [n, 3]
    colour[shaded] *= SIDE_SHADE
    horizon = n / 2 + pose.pitch * PITCH_STEP * n
    rows = np.arange(n)[:, None] + 0.5  # [n, 1]
    half = 0.5 * _focal(n) / depth  # half the wall height in pixels (walls 1 high, eye at 0.5)
    image = np.where((rows < horizon)[..., None], np.array(SKY, float), np.array(FLOOR, float))
    image = np.broadcast_to(image, (n, n, 3)).copy()
    wall = (rows >= horizon - half) & (rows < horizon + half)  # [n, n]
    image[wall] = np.broadcast_to(colour[None], (n, n, 3))[wall]
    _draw_balls(image, level, pose, balls, depth, horizon)
    image = image.reshape(resolution, SUPERSAMPLE, resolution, SUPERSAMPLE, 3).mean((1, 3))
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _focal(n: int) -> float:
    """Pixels per unit at depth 1 (the same horizontally and vertically)."""
    return (n / 2) / math.tan(math.radians(FOV_DEGREES) / 2)


def _camera(pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """View direction and camera plane (to the right; its length sets the field of view)."""
    d = np.array([math.cos(pose.heading), math.sin(pose.heading)])
    plane = np.array([d[1], -d[0]]) * math.tan(math.radians(FOV_DEGREES) / 2)
    return d, plane


def _cast_columns(level: Level, pose: Pose, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DDA ray casting of n columns → perpendicular wall distance [n], the face's colour
    index [n] and whether it is a y-side face (shaded) [n]."""
    d, plane = _camera(pose)
    cam = 2 * (np.arange(n) + 0.5) / n - 1  # −1 (left) … 1 (right)
    ray = d[None] + cam[:, None] * plane[None]  # [n, 2]
    with np.errstate(divide="ignore"):
        delta = np.abs(1.0 / ray)  # distance between x (resp. y) grid lines along the ray
    cell = np.floor([pose.x, pose.y]).astype(int)[None].repeat(n, 0)  # [n, 2]
    step = np.where(ray < 0, -1, 1)
    frac = np.array([pose.x, pose.y]) - cell
    side_dist = np.where(ray < 0, frac, 1 - frac) * delta
    hit = np.zeros(n, bool)
    side = np.zeros(n, int)  # 0: crossed an x grid line, 1: a y grid line
    h, w = level.cells.shape
    for _ in range(2 * (h + w)):
        axis = (side_dist[:, 1] < side_dist[:, 0]).astype(int)
        go = ~hit
        rows = np.nonzero(go)[0]
        cell[rows, axis[rows]] += step[rows, axis[rows]]
        side[go] = axis[go]
        side_dist[rows, axis[rows]] += delta[rows, axis[rows]]
        cx, cy = np.clip(cell[:, 0], 0, w - 1), np.clip(cell[:, 1], 0, h - 1)
        hit |= level.cells[cy, cx] > 0
        if hit.all():
            break
    dist = side_dist[np.arange(n), side] - delta[np.arange(n), side]
    dist = np.maximum(dist, 1e-3)
    cx, cy = np.clip(cell[:, 0], 0, w - 1), np.clip(cell[:, 1], 0, h - 1)
    # the face hit: crossing an x line moving +x hits the block's −x face (side 0), etc.
    face = np.where(side == 0, np.where(step[:, 0] > 0, 0, 1), np.where(step[:, 1] > 0, 2, 3))
    return dist, level.faces[cy, cx, face], side == 1


def _project(pose: Pose, x: float, y: float) -> tuple[float, float]:
    """(depth along the view, screen column in −1 … 1) of a floor point."""
    d, plane = _camera(pose)
    rel = np.array([x - pose.x, y - pose.y])
    depth = float(rel @ d)
    lateral = float(rel @ plane) / float(plane @ plane)
    return depth, lateral / max(depth, 1e-6)


def _draw_balls(
    image: np.ndarray,
    level: Level,
    pose: Pose,
    balls: tuple[Ball, ...],
    depth: np.ndarray,
    horizon: float,
) -> None:
    """Draw balls as shaded discs, far ones first, hidden where a wall is nearer."""
    n = image.shape[0]
    cols, rows = np.meshgrid(np.arange(n) + 0.5, np.arange(n) + 0.5)
    visible = [(b, *_project(pose, b.x, b.y)) for b in balls]
    for ball, z, u in sorted(visible, key=lambda item: -item[1]):
        if z < 0.1:
            continue
        radius = ball.radius * _focal(n) / z  # pixels
        cx = (u + 1) * n / 2
        cy = horizon + (0.5 - ball.radius) * _focal(n) / z  # the centre is radius above floor
        inside = (cols - cx) ** 2 + (rows - cy) ** 2 < radius**2
        inside &= (depth[None, :] > z - ball.radius) & (cols >= 0)
        if not inside.any():
            continue
        shade = 1.0 - 0.35 * np.clip(((cols - cx) + (rows - cy)) / (2 * radius) + 0.5, 0, 1)
        rgb = np.array(PALETTE[ball.colour][1], float)
        image[inside] = (rgb[None] * shade[inside][:, None]).clip(0, 255)


# -- levels -------------------------------------------------------------------------------


def make_level(seed: int, size: int = 8, pillars: int = 3) -> Level:
    """A size × size room closed by walls, each wall block one colour, plus pillars."""
    rng = np.random.default_rng(seed)
    cells = np.zeros((size, size), int)
    colours = rng.permutation(np.arange(1, len(PALETTE)))
    # the four outer walls: two colours per wall, split at a random point
    for k, (rows, cols) in enumerate(
        [(0, slice(None)), (size - 1, slice(None)), (slice(None), 0), (slice(None), size - 1)]
    ):
        line = np.full(size, colours[2 * k % len(colours)])
        line[rng.integers(2, size - 2) :] = colours[(2 * k + 1) % len(colours)]
        cells[rows, cols] = np.where(cells[rows, cols] > 0, cells[rows, cols], line)
    for _ in range(pillars):
        i, j = rng.integers(2, size - 2, 2)
        cells[i, j] = rng.integers(1, len(PALETTE))
    faces = np.repeat(cells[..., None], 4, axis=2)
    return Level(cells, faces)


def random_world(seed: int, level: Level, moving: bool = True) -> World:
    """A free camera pose and two balls (one rolling if `moving`) in `level`."""
    rng = np.random.default_rng(seed)
    pose = Pose(*_free_point(rng, level, 0.6), float(rng.uniform(0, 2 * math.pi)))
    balls = []
    for k in range(2):
        x, y = _free_point(rng, level, 0.4)
        speed, angle = (0.18, rng.uniform(0, 2 * math.pi)) if moving and k == 0 else (0.0, 0.0)
        colour = int(rng.integers(1, len(PALETTE)))
        balls.append(Ball(x, y, colour, vx=speed * math.cos(angle), vy=speed * math.sin(angle)))
    return World(level, pose, tuple(balls))


def _free_point(rng: np.random.Generator, level: Level, radius: float) -> tuple[float, float]:
    h, w = level.cells.shape
    for _ in range(1000):
        x, y = rng.uniform(1, w - 1), rng.uniform(1, h - 1)
        if level.free(x, y, radius):
            return float(x), float(y)
    raise ValueError("the level has no free space")


TURNTABLE_CENTRE = (3.5, 3.5)


def turntable_world(radius: float = 2.0, start_degrees: float = 0.0) -> World:
    """A 7 × 7 room, a block in the middle with four face colours, the camera facing it."""
    size = 7
    cells = np.zeros((size, size), int)
    cells[0, :], cells[-1, :], cells[:, 0], cells[:, -1] = 7, 7, 7, 7  # white walls
    cells[3, 3] = 1
    faces = np.repeat(cells[..., None], 4, axis=2)
    faces[3, 3] = (1, 3, 4, 2)  # red (−x), blue (+x), yellow (−y), green (+y)
    level = Level(cells, faces)
    start = World(level, Pose(TURNTABLE_CENTRE[0] - radius, TURNTABLE_CENTRE[1]))
    return start.orbit(start_degrees, TURNTABLE_CENTRE)


# -- captions -----------------------------------------------------------------------------


def caption(world: World) -> str:
    """A short description of the view: the wall ahead and the balls seen, where."""
    n = RESOLUTION * SUPERSAMPLE
    depth, colour_index, _ = _cast_columns(world.level, world.pose, n)
    near = "near" if depth[n // 2] < 1.5 else "far"
    parts = [f"a {COLOUR_NAMES[colour_index[n // 2]]} wall {near} ahead"]
    for ball in world.balls:
        z, u = _project(world.pose, ball.x, ball.y)
        if z > 0.1 and abs(u) < 1 and depth[int((u + 1) / 2 * (n - 1))] > z:
            where = "on the left" if u < -0.33 else "on the right" if u > 0.33 else "ahead"
            parts.append(f"a {COLOUR_NAMES[ball.colour]} ball {where}")
    return ", ".join(parts) + "."
