"""Before the operator starts: a CRD not installed yet is waited for and said once; refused credentials end
it in one line that names the server and where the credentials came from."""

from __future__ import annotations

import logging

import pytest

from clusterpki.errors import UserError
from clusterpki.kube import api as kube_api
from clusterpki.kube.api import ApiError
from clusterpki.kube.served import until_served


class Answers:
    def __init__(self, *statuses: int) -> None:
        self.statuses, self.paths = list(statuses), []

    async def request(self, verb, what, method, path, params=None, **_):
        self.paths.append(path)
        status = self.statuses.pop(0)
        if status != 200:
            raise ApiError(verb, what, status, "NotFound" if status == 404 else "Unauthorized")
        return {"items": []}


async def test_a_missing_crd_is_waited_for_and_said_once(caplog):
    answers = Answers(404, 404, 404, 200, 200)
    with caplog.at_level(logging.INFO, logger="clusterpki.kube.served"):
        await until_served(answers, ["a", "b"], "https://api:6443", pause=0)
    said = [r.getMessage() for r in caplog.records]
    assert sum("clusterpkis.pki.clusterpki.dev is not installed on https://api:6443" in s for s in said) == 1, said
    assert said[-1] == "ClusterPKIs are served: starting"
    assert answers.paths[-2:] == ["/apis/pki.clusterpki.dev/v1alpha1/namespaces/a/clusterpkis",
                                  "/apis/pki.clusterpki.dev/v1alpha1/namespaces/b/clusterpkis"]


@pytest.mark.parametrize("status, words", [(401, "refuses the credentials from --kubeconfig /k.conf"),
                                           (403, "may not list ClusterPKIs on https://api:6443")])
async def test_refused_credentials_are_one_line(status, words, monkeypatch):
    monkeypatch.setattr(kube_api, "_source", kube_api.Source("/k.conf"))
    with pytest.raises(UserError) as raised:
        await until_served(Answers(status), [], "https://api:6443", pause=0)
    assert words in str(raised.value) and "\n" not in str(raised.value)
