"""A few lines of code and prose to train throwaway byte-level tokenizers on in tests."""

CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "def greet(name):\n    '''Say hello.'''\n    return f'hello {name}'\n",
    "class Stack:\n    def push(self, x):\n        self.items.append(x)\n",
    "Write a function that adds two numbers and returns the sum.\n",
] * 10
