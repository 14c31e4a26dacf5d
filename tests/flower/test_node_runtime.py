"""The in-process Runtime API of a worker thread inside its SuperNode: the node's own state, errors as HTTP."""

import httpx
import pytest
from flwr.proto.runtime_pb2 import AcquireTaskRequest, PullTaskInputRequest  # pylint: disable=E0611
from flwr.supercore.constant import TaskType
from flwr.supercore.error import ApiErrorCode, FlowerError
from flwr.supercore.error.catalog import API_ERROR_MAP
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supernode.nodestate import NodeStateFactory

from bouquet.flower.node_runtime import InNodeRuntime, NodeStateBox


@pytest.fixture
def box():
    out = NodeStateBox()
    out.put(NodeStateFactory(objectstore_factory=ObjectStoreFactory()).state())
    return out


def test_a_claim_with_no_pending_task_gets_no_task(box):
    res = InNodeRuntime(box).AcquireTask(AcquireTaskRequest(supported_task_types=[str(TaskType.CLIENT_APP)]))
    assert not res.HasField("task") and not res.token


@pytest.mark.parametrize("token", [None, "not-a-token"])
def test_a_task_call_with_an_unknown_token_is_refused_as_http_401(box, token):
    with pytest.raises(httpx.HTTPStatusError) as err:
        InNodeRuntime(box, token).PullTaskInput(PullTaskInputRequest())
    assert err.value.response.status_code == 401 and "pull-task-input" in str(err.value)


def test_a_handlers_flower_error_becomes_its_catalog_http_status(box):
    code = ApiErrorCode.RUNTIME_INVALID_MESSAGE_COUNT

    def fails(state):
        raise FlowerError(code, "two messages")

    with pytest.raises(httpx.HTTPStatusError) as err:
        InNodeRuntime(box, "t")._call("/v1/runtime/push-messages", fails)
    assert err.value.response.status_code == API_ERROR_MAP[code].http_status_code
    assert "two messages" in str(err.value)


def test_a_method_the_runtime_api_lacks_is_an_attribute_error(box):
    with pytest.raises(AttributeError):
        InNodeRuntime(box).DeleteEverything  # noqa: B018


def test_the_box_hands_over_the_first_state_only():
    box = NodeStateBox()
    first, second = object(), object()
    box.put(first)
    box.put(second)
    assert box.get() is first
