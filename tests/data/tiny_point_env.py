"""A tiny custom Gymnasium env for tests/test_own_env.py: move a point on a line to 0."""
import gymnasium as gym
import numpy as np


class PointEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, render_mode=None):
        self.observation_space = gym.spaces.Box(-5.0, 5.0, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.render_mode = render_mode
        self.x = np.zeros(2, np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = self.np_random.uniform(-2, 2, 2).astype(np.float32)
        return self.x.copy(), {}

    def step(self, action):
        self.x[0] = np.clip(self.x[0] + 0.1 * float(action[0]), -5, 5)
        reward = -abs(float(self.x[0]))
        return self.x.copy(), reward, False, False, {}

    def render(self):
        img = np.full((32, 32, 3), 255, np.uint8)
        col = int(np.clip((self.x[0] + 5) / 10 * 31, 0, 31))
        img[:, col] = 0
        return img


class PixelPointEnv(PointEnv):
    """The same point, observed as its 16x16 picture (uint8 pixels)."""

    def __init__(self, render_mode=None):
        super().__init__(render_mode)
        self.observation_space = gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.render()[::2, ::2], {}

    def step(self, action):
        _, reward, terminated, truncated, info = super().step(action)
        return self.render()[::2, ::2], reward, terminated, truncated, info


gym.register("Point-v0", entry_point=PointEnv, max_episode_steps=50)
