"""The configurator's strictness at its edges: open bounds refuse the bound itself, closed
ones take it; a config file's private helpers and imports are its own business."""
import math

import pytest

from configurator import UserError, configure, require_range


@pytest.mark.parametrize('value, kwargs, ok', [
    (0, dict(low=0, low_open=True), False), # mask_bias_limit: > 0
    (1e-9, dict(low=0, low_open=True), True),
    (0, dict(low=0), True),
    (1, dict(low=0, high=1, high_open=True), False), # beta2: [0, 1)
    (0, dict(low=0, high=1, low_open=True, high_open=True), False), # target_mask_prob: (0, 1)
    (1, dict(low=0, high=1), True),
    (0.5, dict(low=0, high=1, low_open=True, high_open=True), True),
])
def test_open_and_closed_bounds(value, kwargs, ok):
    configure({'limit': 20.0}, [])
    if ok:
        require_range('limit', value, **kwargs)
    else:
        with pytest.raises(UserError, match=f"limit must be .*, not {value}"):
            require_range('limit', value, **kwargs)


def test_config_file_helpers_stay_private(tmp_path, capsys):
    path = tmp_path / 'config.py'
    path.write_text("import math\n_rows = 4\nbatch_size = _rows * 4\nlearning_rate = math.pi / 1000\n")
    namespace = dict(batch_size=12, learning_rate=6e-4)
    config = configure(namespace, [str(path)])
    assert config == namespace == dict(batch_size=16, learning_rate=pytest.approx(math.pi / 1000))
