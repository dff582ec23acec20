from cai.cli import main

# vLLM spawns worker processes that re-import __main__: keep the guard.
if __name__ == "__main__":
    main()
