"""
nanoGPT's "poor man's configurator", made strict. A script defines its defaults as
globals, then calls

    from configurator import configure
    configure(globals())

which applies, in order, every argument of the command line:
    python train.py config/override_file.py --batch_size=32
A bare argument is a Python config file whose assignments override the defaults;
--key=value is parsed as a Python literal (falling back to a plain string).
Unlike nanoGPT, a mistake stops the run with one line instead of silently creating a
new global: an unknown key (the closest known keys are suggested) or a value of the
wrong type. An int is accepted where a float is expected, true/false spell bools, a
key whose default is None takes any value, and values may contain '='. --help (or -h)
lists the options with their defaults and the comment beside each global, then exits.

Every script imports this module first, so it also owns the project's way of
reporting a user's mistake: raise UserError and the user sees one line, no traceback;
require, require_choice and require_range are the checks the scripts make of their
settings, before they touch any data, model or output. Ctrl-C, too, ends a script with
one line (exit status 130), which a long script can extend with note_for_ctrl_c.
"""

import ast
import difflib
import io
import os
import sys
import tokenize
import traceback


class UserError(Exception):
    """A mistake the user can fix (bad option, missing file, ...): shown as one line."""


_ctrl_c_note = ''


def note_for_ctrl_c(note):
    """Add note to the line that Ctrl-C prints: what a long script has written so far."""
    global _ctrl_c_note
    _ctrl_c_note = note


def _excepthook(exc_type, exc, tb):
    # sys.__stderr__, not sys.stderr: torch.distributed wraps this hook with one that
    # buffers sys.stderr and would drop the message when sys.exit leaves the hook
    if issubclass(exc_type, UserError):
        print(f"error: {exc}", file=sys.__stderr__, flush=True)
        sys.exit(2)
    if issubclass(exc_type, KeyboardInterrupt): # Ctrl-C is how a user stops a script: not a bug
        print(f"stopped by Ctrl-C{': ' + _ctrl_c_note if _ctrl_c_note else ''}", file=sys.__stderr__, flush=True)
        sys.exit(130) # the shell's status for a process ended by SIGINT
    sys.__excepthook__(exc_type, exc, tb)


sys.excepthook = _excepthook

CONFIG_TYPES = (bool, int, float, str, type(None))
DEFAULTS = {} # {key: default} of the last configure() call: the examples in require_range's messages
GIVEN = set() # the keys that the last configure() call set (from a config file or the command line)


def config_keys(namespace):
    """The configurable names of a script: public globals of plain types."""
    return [k for k, v in namespace.items() if not k.startswith('_') and isinstance(v, CONFIG_TYPES)]


def _check(key, value, namespace, known, source):
    if key not in known:
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see the globals at the top of the script"
        raise UserError(f"unknown config key '{key}' (from {source}){hint}")
    default = namespace[key]
    if default is None:
        return value
    if isinstance(default, bool) or isinstance(value, bool):
        if isinstance(default, bool) and isinstance(value, bool):
            return value
    elif isinstance(default, float) and isinstance(value, int):
        return float(value)
    elif type(value) == type(default):
        return value
    raise UserError(f"config key '{key}' expects {type(default).__name__} (default {default!r}), got {value!r} from {source}")


def _run_config_file(path, source):
    """The assignments of a config file; a file that does not parse or run is one line
    that names it and the line at fault."""
    try:
        code = compile(source, path, 'exec')
    except SyntaxError as e:
        raise UserError(f"config file {path}, line {e.lineno}: {e.msg}: a config file holds Python "
                        "assignments such as batch_size = 32") from None
    values = {}
    try:
        exec(code, {}, values)
    except Exception as e:
        # the innermost line of this file (a config may exec() another one)
        lines = [frame.lineno for frame in traceback.extract_tb(e.__traceback__) if frame.filename == path]
        detail = str(e).splitlines()[0] if str(e) else ''
        raise UserError(f"config file {path}, line {lines[-1] if lines else '?'}: {type(e).__name__}"
                        f"{': ' + detail if detail else ''}") from None
    return values


def _parse_value(text, default):
    if isinstance(default, bool) and text.lower() in ('true', 'false'):
        return text.lower() == 'true'
    if isinstance(default, str):
        return text # a string option is taken as typed, even if it looks like a number
    try:
        return ast.literal_eval(text)
    except (SyntaxError, ValueError):
        return text


def _global_assignments(source):
    """(name, node) of every top-level `name = value` of a script's source."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            yield node.targets[0].id, node


def script_defaults(path):
    """{key: default} of another script's globals whose first value is a plain literal, read
    from its source without running it: bench.py times train.py's step with train.py's settings."""
    defaults = {}
    for name, node in _global_assignments(open(path, encoding='utf-8').read()):
        if name not in defaults:
            try:
                defaults[name] = ast.literal_eval(node.value)
            except ValueError: # not a literal, e.g. 5 * 8
                pass
    return defaults


def option_help(namespace):
    """The --help text of a script: the first paragraph of its docstring, then every option as
    --key=default and the comment beside its global (with the comment lines that continue it),
    read from the script's source, so the comments stay the one description of each option."""
    path = namespace.get('__file__')
    source = open(path, encoding='utf-8').read() if path else ''
    comments = {tok.start[0]: (tok.start[1], tok.string.lstrip('# ').rstrip())
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    lines = source.splitlines()
    described = {}
    for name, node in _global_assignments(source):
        text, line = [], node.end_lineno
        if line in comments:
            column, comment = comments[line]
            text.append(comment)
            # comment-only lines below, indented to the same column, continue it
            while line + 1 in comments and comments[line + 1][0] == column and lines[line].lstrip().startswith('#'):
                line += 1
                text.append(comments[line][1])
        described.setdefault(name, ' '.join(text))
    intro = (namespace.get('__doc__') or '').strip().split('\n\n')[0]
    options = [f"  --{key}={namespace[key]!r}" + (f"\n      {described[key]}" if described.get(key) else '')
               for key in config_keys(namespace)]
    usage = f"usage: python {os.path.basename(path or 'script.py')} [config/file.py ...] [--key=value ...]"
    return '\n'.join(filter(None, [usage, intro, 'options (the defaults; a config file or --key=value overrides them):',
                                    *options]))


def configure(namespace, argv=None):
    """Apply config files and --key=value overrides from argv (default sys.argv[1:]) to
    namespace (a script's globals()). Returns {key: value} of all config keys."""
    argv = sys.argv[1:] if argv is None else argv
    if '--help' in argv or '-h' in argv:
        print(option_help(namespace))
        sys.exit(0)
    known = config_keys(namespace)
    DEFAULTS.clear()
    DEFAULTS.update({k: namespace[k] for k in known})
    GIVEN.clear()
    for arg in argv:
        if not arg.startswith('--'):
            if '=' in arg:
                raise UserError(f"argument '{arg}' looks like an override: write it as --{arg}")
            if not os.path.isfile(arg):
                raise UserError(f"config file '{arg}' not found (config files live in config/)")
            print(f"Overriding config with {arg}:")
            with open(arg) as f:
                source = f.read()
            print(source)
            for key, value in _run_config_file(arg, source).items():
                if not key.startswith('_') and isinstance(value, CONFIG_TYPES):
                    namespace[key] = _check(key, value, namespace, known, arg)
                    GIVEN.add(key)
        else:
            if '=' not in arg:
                raise UserError(f"option '{arg}' needs a value: write {arg}=VALUE")
            key, text = arg[2:].split('=', 1)
            value = _parse_value(text, namespace.get(key))
            namespace[key] = _check(key, value, namespace, known, f"--{key}")
            GIVEN.add(key)
            print(f"Overriding: {key} = {namespace[key]!r}")
    return {k: namespace[k] for k in known}


# ----------------------------------------------------------------------------
# checks of settings, each a one-line UserError that says what to type instead

def require(ok, message):
    """Stop with message (one line) unless ok."""
    if not ok:
        raise UserError(message)


def _either(values):
    values = [repr(v) for v in values]
    return values[0] if len(values) == 1 else ', '.join(values[:-1]) + ' or ' + values[-1]


def require_choice(key, value, choices):
    """value must be one of choices; the closest one is suggested."""
    if value in choices:
        return
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
    hint = f": did you mean --{key}={close[0]}?" if close else ''
    raise UserError(f"{key} must be {_either(choices)}, not {value!r}{hint}")


def require_range(key, value, low=None, high=None, low_open=False, high_open=False, integer=False):
    """low <= value <= high (< where low_open/high_open; None: no bound); integer also
    refuses a float. The message names the range and, as an example, the default."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (not integer or isinstance(value, int))
    ok = ok and (low is None or (low < value if low_open else low <= value))
    ok = ok and (high is None or (value < high if high_open else value <= high))
    if ok:
        return
    if low is not None and high is not None:
        bounds = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif low is not None:
        bounds = f"{'>' if low_open else '>='} {low}"
    else:
        bounds = f"{'<' if high_open else '<='} {high}"
    default = DEFAULTS.get(key)
    example = ''
    if default is not None and default != value:
        try:
            require_range(key, default, low, high, low_open, high_open, integer)
            example = f": e.g. --{key}={default} (the default)"
        except UserError:
            pass
    raise UserError(f"{key} must be {'an integer ' if integer else ''}{bounds}, not {value!r}{example}")


def parse_list(text, kind, key):
    """The values of a comma-separated setting, each converted by kind (blanks skipped); an
    unconvertible or empty list is a one-line error naming the key."""
    try:
        values = [kind(v) for v in text.split(',') if v.strip()]
    except ValueError:
        raise UserError(f"{key} must be a comma-separated list of {kind.__name__}s, got {text!r}")
    if not values:
        raise UserError(f"{key} is empty: give at least one value")
    return values
