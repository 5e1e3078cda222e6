"""The web layer's one error: an HTTP status and a message that names the problem and the way out."""


class ApiError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message
