"""configurator.configure: config files and --key=value overrides, strictly checked,
and the one-line error a script shows for a mistake."""
import subprocess
import sys
from pathlib import Path

import pytest

import configurator
from configurator import UserError, config_keys, configure, require_choice, require_range

ROOT = Path(__file__).resolve().parent.parent


def defaults():
    """The globals() of a script, as configure sees them."""
    return dict(out_dir='out', batch_size=12, learning_rate=6e-4, compile=True, init_from='scratch',
                wandb_run_name=None, dtype='auto', n_layer=12, n_head=12, _private=1,
                math=sys, helper=lambda: None, betas=(0.9, 0.95))


def test_config_keys_are_public_plain_globals():
    assert set(config_keys(defaults())) == {'out_dir', 'batch_size', 'learning_rate', 'compile', 'init_from',
                                             'wandb_run_name', 'dtype', 'n_layer', 'n_head'}


def test_no_arguments_changes_nothing():
    ns = defaults()
    config = configure(ns, [])
    assert config == {k: ns[k] for k in config_keys(ns)}
    assert ns == {**defaults(), 'helper': ns['helper']}


def test_key_value_literals():
    ns = defaults()
    config = configure(ns, ['--batch_size=32', '--learning_rate=1e-3', '--compile=False', '--out_dir=out-x'])
    assert ns['batch_size'] == 32 and type(ns['batch_size']) is int
    assert ns['learning_rate'] == 1e-3
    assert ns['compile'] is False
    assert ns['out_dir'] == 'out-x'
    # the returned config holds the final values of every key
    assert config['batch_size'] == 32 and config['compile'] is False and config['n_layer'] == 12


def test_later_arguments_win():
    ns = defaults()
    configure(ns, ['--batch_size=2', '--batch_size=3'])
    assert ns['batch_size'] == 3


def test_none_only_where_the_default_is_none():
    with pytest.raises(UserError, match="batch_size.*expects int"):
        configure(defaults(), ['--batch_size=None'])


def test_int_accepted_for_float():
    ns = defaults()
    configure(ns, ['--learning_rate=1'])
    assert ns['learning_rate'] == 1.0 and type(ns['learning_rate']) is float


def test_float_not_accepted_for_int():
    with pytest.raises(UserError, match="batch_size.*expects int"):
        configure(defaults(), ['--batch_size=3.5'])


@pytest.mark.parametrize('text, value', [('true', True), ('false', False), ('True', True), ('False', False),
                                         ('TRUE', True)])
def test_bool_spellings(text, value):
    ns = defaults()
    configure(ns, [f'--compile={text}'])
    assert ns['compile'] is value


@pytest.mark.parametrize('text', ['1', '0', 'yes', "'True'"])
def test_bool_rejects_other_values(text):
    with pytest.raises(UserError, match="compile.*expects bool"):
        configure(defaults(), [f'--compile={text}'])


def test_int_rejects_bool():
    with pytest.raises(UserError, match="n_layer"):
        configure(defaults(), ['--n_layer=True'])


def test_string_option_taken_as_typed():
    ns = defaults()
    configure(ns, ['--out_dir=123', '--dtype=float16', '--init_from=True'])
    assert ns['out_dir'] == '123' and ns['dtype'] == 'float16' and ns['init_from'] == 'True'


def test_none_default_accepts_anything():
    for text, value in (('7', 7), ('2.5', 2.5), ('run-7', 'run-7'), ('True', True), ('None', None)):
        ns = defaults()
        configure(ns, [f'--wandb_run_name={text}'])
        assert ns['wandb_run_name'] == value and type(ns['wandb_run_name']) is type(value)


def test_values_may_contain_equals():
    ns = defaults()
    configure(ns, ['--out_dir=runs/a=1,b=2', '--wandb_run_name=lr=3e-4'])
    assert ns['out_dir'] == 'runs/a=1,b=2'
    assert ns['wandb_run_name'] == 'lr=3e-4'


def test_none_text_for_a_string_key_stays_text():
    ns = defaults()
    configure(ns, ['--init_from=None'])
    assert ns['init_from'] == 'None' # a str option is taken as typed


def test_unknown_key_names_the_closest():
    with pytest.raises(UserError) as e:
        configure(defaults(), ['--batch_sise=3'])
    msg = str(e.value)
    assert "'batch_sise'" in msg and 'batch_size' in msg and '\n' not in msg
    with pytest.raises(UserError, match='n_layer') as e:
        configure(defaults(), ['--n_layers=3'])
    with pytest.raises(UserError, match="unknown config key 'zzz'"):
        configure(defaults(), ['--zzz=3'])


def test_private_and_non_plain_globals_are_not_configurable():
    for arg in ('--_private=2', '--math=3', '--betas=(0.8, 0.9)'):
        with pytest.raises(UserError, match='unknown config key'):
            configure(defaults(), [arg])


def test_malformed_arguments():
    with pytest.raises(UserError, match='--batch_size=3'):
        configure(defaults(), ['batch_size=3']) # forgot the dashes
    with pytest.raises(UserError, match='needs a value'):
        configure(defaults(), ['--compile'])


def test_config_file_overrides(tmp_path, capsys):
    cfg = tmp_path / 'my_config.py'
    cfg.write_text("import math\n"
                   "batch_size = 64\n"
                   "learning_rate = 3 # an int for a float\n"
                   "out_dir = 'out-' + str(math.floor(2.5))\n"
                   "_scratch = [1, 2] # private: ignored\n"
                   "def f(): pass\n")
    ns = defaults()
    config = configure(ns, [str(cfg), '--batch_size=8'])
    assert ns['learning_rate'] == 3.0 and type(ns['learning_rate']) is float
    assert ns['out_dir'] == 'out-2'
    assert ns['batch_size'] == 8 # the command line comes after the file
    assert config['batch_size'] == 8
    assert '_scratch' not in ns and 'f' not in ns and 'math' not in config
    assert 'batch_size = 64' in capsys.readouterr().out # the file is echoed, as in nanoGPT


def test_config_file_mistakes(tmp_path):
    bad = tmp_path / 'bad.py'
    bad.write_text("batch_sizee = 3\n")
    with pytest.raises(UserError) as e:
        configure(defaults(), [str(bad)])
    assert 'batch_size' in str(e.value) and str(bad) in str(e.value)
    wrong = tmp_path / 'wrong.py'
    wrong.write_text("n_layer = '12'\n")
    with pytest.raises(UserError, match="n_layer.*expects int"):
        configure(defaults(), [str(wrong)])


def test_config_file_that_does_not_parse_or_run(tmp_path):
    """One line that names the file and the line at fault, not a SyntaxError traceback."""
    broken = tmp_path / 'broken.py'
    broken.write_text("n_layer = 2\nbatch_size = \n")
    with pytest.raises(UserError, match=r"broken\.py, line 2: invalid syntax"):
        configure(defaults(), [str(broken)])
    failing = tmp_path / 'failing.py'
    failing.write_text("n_layer = 2\nn_head = 12 // 0\n")
    with pytest.raises(UserError, match=r"failing\.py, line 2: ZeroDivisionError"):
        configure(defaults(), [str(failing)])
    outer = tmp_path / 'outer.py' # a config that exec()s a broken one: the line of the outer file
    outer.write_text(f"dropout = 0.1\nexec(open({str(broken)!r}).read())\n")
    with pytest.raises(UserError, match=r"outer\.py, line 2: SyntaxError"):
        configure(defaults(), [str(outer)])


def test_given_keys_and_defaults(tmp_path):
    cfg = tmp_path / 'c.py'
    cfg.write_text("n_layer = 4\n")
    configure(defaults(), [str(cfg), '--out_dir='])
    assert configurator.GIVEN == {'n_layer', 'out_dir'}
    assert configurator.DEFAULTS['batch_size'] == 12


@pytest.mark.parametrize('call, message', [
    (lambda: require_range('batch_size', 0, low=1, integer=True), r"batch_size must be an integer >= 1, not 0: e\.g\. --batch_size=12 \(the default\)"),
    (lambda: require_range('batch_size', 2.5, low=1, integer=True), "batch_size must be an integer >= 1, not 2.5"),
    (lambda: require_range('dropout', 1.0, low=0, high=1, high_open=True), r"dropout must be in \[0, 1\), not 1\.0$"),
    (lambda: require_range('rate', float('nan'), low=0, low_open=True), "rate must be > 0, not nan"),
    (lambda: require_choice('dtype', 'float61', ('float32', 'float16')), "dtype must be 'float32' or 'float16', not 'float61': did you mean --dtype=float16"),
])
def test_require_messages(call, message):
    configure(defaults(), [])
    with pytest.raises(UserError, match=message):
        call()


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        configure(defaults(), [str(tmp_path / 'nope.py')])


def test_shipped_configs_are_valid():
    """Every config in config/ only sets keys that train.py knows, with the right types."""
    source = (ROOT / 'train.py').read_text()
    ns = {}
    exec(source[:source.index('config = configure(globals())')], ns) # the defaults block of train.py
    assert {'batch_size', 'model_type', 'loss_type', 'mask_bias_gain'} <= set(ns)
    configs = sorted((ROOT / 'config').glob('*.py'))
    assert configs
    import os
    cwd = os.getcwd()
    os.chdir(ROOT) # configs exec() others by a path relative to the repo root
    try:
        for cfg in configs:
            configure(dict(ns), [str(cfg.relative_to(ROOT))])
    finally:
        os.chdir(cwd)


def run_script(*args):
    return subprocess.run([sys.executable, 'train.py', *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def one_line_error(r):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert 'Traceback' not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), r.stderr
    return lines[0]


def test_script_unknown_key_exits_2_with_one_line():
    line = one_line_error(run_script('--bogus_key=1'))
    assert 'bogus_key' in line


def test_script_typo_and_bad_type_and_missing_file():
    assert 'batch_size' in one_line_error(run_script('--batch_sise=3'))
    assert 'expects int' in one_line_error(run_script('--n_layer=2.5'))
    assert 'not found' in one_line_error(run_script('config/no_such_config.py'))


def test_option_help_lists_defaults_and_comments(tmp_path):
    """--help reads each option's comment from the script's source, a wrapped comment whole, and
    exits before anything runs."""
    script = tmp_path / 'script.py'
    script.write_text('"""A script.\n\nMore detail."""\nfrom configurator import configure\n'
                      "steps = 8 # passes per block\nlabel = 'a # b' # a string with a hash\n"
                      "rates = '0.1,0.2' # substitution rates,\n                  # comma-separated\nbare = 1\n"
                      "configure(globals())\nraise SystemExit('not reached')\n", encoding='utf-8')
    r = subprocess.run([sys.executable, str(script), '--help'], capture_output=True, text=True,
                       env={'PYTHONPATH': str(ROOT)})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:2] == ['usage: python script.py [config/file.py ...] [--key=value ...]', 'A script.']
    assert "  --steps=8" in lines and lines[lines.index("  --steps=8") + 1] == '      passes per block'
    assert lines[lines.index("  --label='a # b'") + 1] == '      a string with a hash'
    assert lines[lines.index("  --rates='0.1,0.2'") + 1] == '      substitution rates, comma-separated'
    assert lines[-1] == '  --bare=1' and 'More detail' not in r.stdout


@pytest.mark.parametrize('script', ['train.py', 'sample.py', 'generate_diffusion.py', 'bench.py', 'ablation.py',
                                    'gpu_check.py'])
def test_every_script_has_help(script):
    r = subprocess.run([sys.executable, script, '--help'], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr, r.stderr
    assert r.stdout.startswith(f'usage: python {script}')
    assert r.stdout.count('\n  --') >= 4 and r.stdout.count('\n      ') >= 4 # options, most with their comment


def test_script_defaults_reads_the_first_literal_of_each_global(tmp_path):
    script = tmp_path / 'script.py'
    script.write_text("import os\nlr = 6e-4 # a comment\nname = 'run'\nsteps = 5 * 8\nflags = (1, 2)\n"
                      "lr = 1.0\nif True:\n    inner = 3\ndevice, kind = 'cpu', 'cpu'\n")
    assert configurator.script_defaults(str(script)) == {'lr': 6e-4, 'name': 'run', 'flags': (1, 2)}


def test_script_defaults_of_train_py_are_its_globals():
    defaults = configurator.script_defaults(str(ROOT / 'train.py'))
    assert defaults['loss_type'] == 'seed' and defaults['learning_rate'] == 6e-4 and defaults['target_mask_prob'] == 0.5
    assert 'gradient_accumulation_steps' not in defaults # 5 * 8 is not a literal
