"""Drop-in use from other frameworks: LangChain's OpenAIEmbeddings (default settings: refused with the fix named;
check_embedding_ctx_length=False: right vectors), LlamaIndex's OpenAILikeEmbedding and the OpenAI SDK against
`mlx-embed serve`; and the in-process adapters for LangChain, LlamaIndex and Chroma. Vectors equal the library's."""

import numpy as np
import pytest

import mlx_qwen3_embed as mqe
from vl_fixtures import vl_model  # noqa: F401  (session fixture)

ATOL = 1e-5


@pytest.fixture(scope="module")
def sample(texts):
    return [t for t in texts if t]


# --- clients of the OpenAI dialect against mlx-embed serve -------------------------------------------------------

@pytest.fixture
def cl100k(monkeypatch):
    """tiktoken's cl100k_base, offline: bpe-openai ships the same table (tiktoken downloads it at first use)."""
    bpe_openai = pytest.importorskip("bpe_openai")
    base = pytest.importorskip("langchain_openai.embeddings.base")

    def unknown(name):
        raise KeyError(name)  # as tiktoken does for a model name it does not know

    monkeypatch.setattr(base.tiktoken, "encoding_for_model", unknown)
    monkeypatch.setattr(base.tiktoken, "get_encoding", bpe_openai.get_encoding)
    return bpe_openai.get_encoding("cl100k_base")


def test_langchain_default_settings_get_a_400_naming_the_fix(served, cl100k, sample):
    langchain_openai = pytest.importorskip("langchain_openai")
    import openai

    lc = langchain_openai.OpenAIEmbeddings(model="tiny", base_url=served + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        lc.embed_documents(sample[:3])
    assert e.value.status_code == 400 and "check_embedding_ctx_length=False" in str(e.value)


def test_foreign_ids_inside_the_vocabulary_are_refused_too(served, cl100k, embedder, sample):
    """cl100k ids folded into this model's vocabulary: valid ids, but not a Qwen tokenization of anything."""
    import openai

    client = openai.OpenAI(base_url=served + "/v1", api_key="unused", max_retries=0)
    vocab = embedder.args.vocab_size
    folded = [[t % vocab for t in cl100k.encode_ordinary(text)] for text in sample]
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="tiny", input=folded)
    assert "check_embedding_ctx_length=False" in str(e.value) and e.value.code == "foreign_token_ids"


def test_langchain_without_ctx_length_check_equals_library(served, embedder, sample):
    langchain_openai = pytest.importorskip("langchain_openai")
    lc = langchain_openai.OpenAIEmbeddings(model="tiny", base_url=served + "/v1", api_key="unused",
                                           check_embedding_ctx_length=False)
    np.testing.assert_allclose(np.array(lc.embed_documents(sample)), embedder.embed(sample), atol=ATOL)
    np.testing.assert_allclose(np.array(lc.embed_query(sample[0])), embedder.embed(sample[0]), atol=ATOL)


def test_llama_index_openai_like_equals_library(served, embedder, sample):
    openai_like = pytest.importorskip("llama_index.embeddings.openai_like")
    li = openai_like.OpenAILikeEmbedding(model_name="tiny", api_base=served + "/v1", api_key="unused")
    sent = [t.replace("\n", " ") for t in sample]  # the client itself turns newlines into spaces before it sends
    np.testing.assert_allclose(np.array(li.get_text_embedding_batch(sample)), embedder.embed(sent), atol=ATOL)
    np.testing.assert_allclose(np.array(li.get_query_embedding(sample[0])), embedder.embed(sample[0]), atol=ATOL)


def test_openai_sdk_equals_library(served, embedder, sample):
    import openai

    client = openai.OpenAI(base_url=served + "/v1", api_key="unused", max_retries=0)
    response = client.embeddings.create(model="tiny", input=sample)
    got = np.array([d.embedding for d in sorted(response.data, key=lambda d: d.index)])
    np.testing.assert_allclose(got, embedder.embed(sample), atol=ATOL)


def test_qwen_token_ids_still_pass_the_foreign_id_check(served, embedder, sample):
    import openai

    client = openai.OpenAI(base_url=served + "/v1", api_key="unused", max_retries=0)
    response = client.embeddings.create(model="tiny", input=embedder.tokenize(sample))
    got = np.array([d.embedding for d in sorted(response.data, key=lambda d: d.index)])
    np.testing.assert_allclose(got, embedder.embed(sample), atol=ATOL)


# --- in-process adapters ------------------------------------------------------------------------------------------

def test_langchain_adapter_equals_library(embedder, sample):
    pytest.importorskip("langchain_core")
    from mlx_qwen3_embed.integrations.langchain import MLXEmbeddings

    lc = MLXEmbeddings(embedder, dim=32)
    np.testing.assert_allclose(np.array(lc.embed_documents(sample)), embedder.embed_document(sample, dim=32),
                               atol=ATOL)
    np.testing.assert_allclose(np.array(lc.embed_query(sample[0])), embedder.embed_query(sample[0], dim=32),
                               atol=ATOL)


def test_langchain_adapter_loads_a_model_by_path(hub_model, embedder, sample):
    pytest.importorskip("langchain_core")
    from mlx_qwen3_embed.integrations.langchain import MLXEmbeddings

    lc = MLXEmbeddings(str(hub_model), instruction="Find code")
    np.testing.assert_allclose(np.array(lc.embed_query(sample[1])),
                               embedder.embed(sample[1], instruction="Find code"), atol=ATOL)


def test_llama_index_adapter_equals_library(embedder, sample):
    pytest.importorskip("llama_index.core")
    from mlx_qwen3_embed.integrations.llama_index import MLXEmbedding

    li = MLXEmbedding(embedder, embed_batch_size=4)
    np.testing.assert_allclose(np.array(li.get_text_embedding_batch(sample)), embedder.embed_document(sample),
                               atol=ATOL)
    np.testing.assert_allclose(np.array(li.get_query_embedding(sample[0])), embedder.embed_query(sample[0]),
                               atol=ATOL)


def test_chroma_adapter_stores_and_finds_with_library_vectors(embedder, sample, tmp_path):
    chromadb = pytest.importorskip("chromadb")
    from mlx_qwen3_embed.integrations.chroma import MLXEmbeddingFunction

    function = MLXEmbeddingFunction(embedder)
    np.testing.assert_allclose(np.array(function(sample)), embedder.embed_document(sample), atol=ATOL)
    np.testing.assert_allclose(np.array(function.embed_query(sample[:1])), embedder.embed_query(sample[:1]),
                               atol=ATOL)
    collection = chromadb.EphemeralClient().create_collection("docs", embedding_function=function)
    collection.add(ids=[str(i) for i in range(len(sample))], documents=sample)
    stored = collection.get(ids=["0", "1"], include=["embeddings"])["embeddings"]
    np.testing.assert_allclose(np.array(stored), embedder.embed_document(sample[:2]), atol=ATOL)
    best = collection.query(query_texts=[sample[2]], n_results=1)["ids"][0]
    expected = int(np.argmax(embedder.embed_query(sample[2]) @ embedder.embed_document(sample).T))
    assert best == [str(expected)]


# --- reranker adapters --------------------------------------------------------------------------------------------

RERANK_QUERY = "What is MLX?"


@pytest.fixture(scope="module")
def reranker(reranker_hub):
    return mqe.load_reranker(str(reranker_hub))


def test_langchain_reranker_keeps_the_best_documents_with_library_scores(reranker, sample):
    documents_module = pytest.importorskip("langchain_core.documents")
    from mlx_qwen3_embed.integrations.langchain import MLXReranker

    documents = [documents_module.Document(page_content=t, metadata={"n": i}) for i, t in enumerate(sample)]
    kept = MLXReranker(reranker, top_n=3).compress_documents(documents, RERANK_QUERY)
    scores = reranker.score(RERANK_QUERY, sample)
    best = np.argsort(-scores, kind="stable")[:3]
    assert [d.metadata["n"] for d in kept] == best.tolist()
    np.testing.assert_allclose([d.metadata["relevance_score"] for d in kept], scores[best], atol=1e-6)


def test_llama_index_rerank_keeps_the_best_nodes_with_library_scores(reranker, sample):
    schema = pytest.importorskip("llama_index.core.schema")
    from mlx_qwen3_embed.integrations.llama_index import MLXRerank

    nodes = [schema.NodeWithScore(node=schema.TextNode(text=t, id_=str(i)), score=0.0) for i, t in enumerate(sample)]
    kept = MLXRerank(reranker, top_n=2).postprocess_nodes(nodes, query_str=RERANK_QUERY)
    scores = reranker.score(RERANK_QUERY, sample)
    best = np.argsort(-scores, kind="stable")[:2]
    assert [n.node.id_ for n in kept] == [str(i) for i in best]
    np.testing.assert_allclose([n.score for n in kept], scores[best], atol=1e-6)


@pytest.fixture(scope="module")
def vl_embedder(vl_model):
    return mqe.load(str(vl_model))


def test_adapters_serve_a_qwen3_vl_model_too(vl_embedder, sample):
    """The adapters call only the contract: a Qwen3-VL model's text vectors come through each of them."""
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    pytest.importorskip("chromadb")
    from mlx_qwen3_embed.integrations.chroma import MLXEmbeddingFunction
    from mlx_qwen3_embed.integrations.langchain import MLXEmbeddings
    from mlx_qwen3_embed.integrations.llama_index import MLXEmbedding

    documents = vl_embedder.embed(sample[:3])
    query = vl_embedder.embed(sample[0], instruction="Find the passage")
    np.testing.assert_allclose(np.array(MLXEmbeddings(vl_embedder).embed_documents(sample[:3])), documents, atol=ATOL)
    np.testing.assert_allclose(np.array(MLXEmbeddings(vl_embedder, instruction="Find the passage")
                                        .embed_query(sample[0])), query, atol=ATOL)
    np.testing.assert_allclose(np.array(MLXEmbedding(vl_embedder).get_text_embedding_batch(sample[:3])), documents,
                               atol=ATOL)
    np.testing.assert_allclose(np.array(MLXEmbeddingFunction(vl_embedder)(sample[:3])), documents, atol=ATOL)
