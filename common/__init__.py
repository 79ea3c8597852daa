"""What every layer of the suite shares; nothing of the suite is imported here.

common.files      atomic_write, write_json: a reader sees the old file or the new one, never part of one;
                  check_writable_folder: a ValueError naming the flag unless the folder can be written
common.hashing    stable_fraction: a number in [0, 1) fixed by the key alone, in every process
common.cli        respell_flags: --max-steps and --max_steps name one option in every entry point;
                  parse_overrides: repeatable KEY=VALUE flags -> {key: JSON value}, each checked against its field's
                  type annotation
"""
