"""What diffedit's Python scripts share with the tools (standard library and NumPy only).

    stream   the tensor stream format, `man 5 diffedit-tensor`: read, write, escape
    edit     the DiffEdit edit as the tools' command lines (argv lists, shell lines)

Not installed: a script puts this folder on its path first, as bench/ and demo/ do:

    sys.path.insert(0, os.path.join(REPO, "python"))
    from diffedit_tools import edit, stream
"""
