"""Robot SDK: register over REST, talk to the gateway over ZeroMQ, execute action chunks asynchronously.

The control loop never waits on the network (``control_loop.RobotClient``); many clients share one
thread through ``FleetRunner`` (``runner``). A robot provides the ``Robot`` interface (``robot``), an
operator or a ``Supervisor`` may take over (``takeover``), and ``register`` / ``deregister`` go through
the platform's REST API (``registration``).

Only numpy, pyzmq, msgpack and httpx are needed here (a robot PC has no Ray or torch).
"""

from fleetrl.robots.client.config import ClientConfig
from fleetrl.robots.client.control_loop import RobotClient
from fleetrl.robots.client.registration import RegistrationError, deregister, register
from fleetrl.robots.client.robot import OperatorFn, Robot, StepResult
from fleetrl.robots.client.runner import FleetRunner
from fleetrl.robots.client.takeover import Supervisor

__all__ = [
    "ClientConfig",
    "FleetRunner",
    "OperatorFn",
    "RegistrationError",
    "Robot",
    "RobotClient",
    "StepResult",
    "Supervisor",
    "deregister",
    "register",
]
